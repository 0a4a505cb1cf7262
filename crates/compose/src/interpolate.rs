//! `${VAR}` interpolation and `.env` files, as `docker compose` does them.
//!
//! `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty), `${VAR-default}` (unset),
//! `${VAR:?message}` and `${VAR?message}` (an error), `${VAR:+other}` and `${VAR+other}`,
//! defaults that hold variables themselves, and `$$` for a literal `$`. Values come from the
//! environment of `uc`, then from the project's `.env` file.

use std::collections::BTreeMap;

/// Where variables are looked up: the shell first, then `.env`.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    pub shell: BTreeMap<String, String>,
    pub dotenv: BTreeMap<String, String>,
}

impl Variables {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.shell
            .get(name)
            .or_else(|| self.dotenv.get(name))
            .map(String::as_str)
    }
}

/// What went wrong in one string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// `${VAR:?message}` with VAR unset: the message (or a default one).
    Required(String),
    Syntax(String),
}

/// Interpolates `text`. Variables that are unset and have no default become empty and are
/// named in `unset`, as Compose warns about them.
pub fn interpolate(
    text: &str,
    vars: &Variables,
    unset: &mut Vec<String>,
) -> Result<String, Problem> {
    if !text.contains('$') {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = closing_brace(r)
                .ok_or_else(|| Problem::Syntax(format!("`${{` without its `}}` in {text:?}")))?;
            out.push_str(&expression(&r[..end], vars, unset)?);
            rest = &r[end + 1..];
        } else {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if len == 0 || rest.as_bytes()[0].is_ascii_digit() {
                // A lone `$` (`cost: 5$`) stays as it is, as in Compose.
                out.push('$');
                continue;
            }
            let name = &rest[..len];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => unset.push(name.to_string()),
            }
            rest = &rest[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The index of the `}` that closes a `${`, counting nested `${…}` in defaults.
fn closing_brace(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn expression(expr: &str, vars: &Variables, unset: &mut Vec<String>) -> Result<String, Problem> {
    let len = expr
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(expr.len());
    let (name, op) = expr.split_at(len);
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        return Err(Problem::Syntax(format!(
            "`${{{expr}}}` does not start with a variable name"
        )));
    }
    let value = vars.get(name);
    let (colon, op) = match op.strip_prefix(':') {
        Some(o) => (true, o),
        None => (false, op),
    };
    // With `:`, an empty value counts as unset.
    let set = match value {
        Some(v) => !(colon && v.is_empty()),
        None => false,
    };
    let Some(kind) = op.chars().next() else {
        if colon {
            return Err(Problem::Syntax(format!(
                "`${{{expr}}}`: `:` must be followed by -, ?, or +"
            )));
        }
        return Ok(match value {
            Some(v) => v.to_string(),
            None => {
                unset.push(name.to_string());
                String::new()
            }
        });
    };
    let arg = &op[kind.len_utf8()..];
    match kind {
        '-' if set => Ok(value.unwrap_or_default().to_string()),
        '-' => interpolate(arg, vars, unset),
        '+' if set => interpolate(arg, vars, unset),
        '+' => Ok(String::new()),
        '?' if set => Ok(value.unwrap_or_default().to_string()),
        '?' => {
            let message = interpolate(arg, vars, unset)?;
            Err(Problem::Required(if message.is_empty() {
                format!("{name} must be set")
            } else {
                format!("{name}: {message}")
            }))
        }
        _ => Err(Problem::Syntax(format!(
            "`${{{expr}}}`: expected `}}`, `:-`, `-`, `:?`, `?`, `:+` or `+` after the name"
        ))),
    }
}

/// Variables of an env file, in file order: a name alone has no value.
pub type EnvPairs = Vec<(String, Option<String>)>;

/// Parses a `.env` (or `env_file`) file: `KEY=VALUE` lines, `export ` allowed, `#` comments,
/// values in single quotes taken as they are, in double quotes with `\n`, `\"` and `\\`
/// escapes, unquoted ones up to a ` #` comment and trimmed. A line without `=` names a
/// variable with an empty value only in `env_file` (Compose reads it from the shell; `uc`
/// does the same). Errors name the line.
pub fn parse_env_file(text: &str) -> Result<EnvPairs, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((key, value)) = line.split_once('=') else {
            if valid_name(line) {
                out.push((line.to_string(), None));
                continue;
            }
            return Err((n, format!("expected KEY=VALUE, found {raw:?}")));
        };
        let key = key.trim();
        if !valid_name(key) {
            return Err((n, format!("{key:?} is not a variable name")));
        }
        let value = value.trim_start();
        let value = if let Some(v) = value.strip_prefix('\'') {
            v.split_once('\'')
                .map(|(v, _)| v.to_string())
                .ok_or((n, "a single quote without its closing quote".to_string()))?
        } else if let Some(v) = value.strip_prefix('"') {
            let mut s = String::new();
            let mut chars = v.chars();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some(c) => s.push(c),
                        None => break,
                    },
                    c => s.push(c),
                }
            }
            if !closed {
                return Err((n, "a double quote without its closing quote".to_string()));
            }
            s
        } else {
            value
                .split_once(" #")
                .map_or(value, |(v, _)| v)
                .trim_end()
                .to_string()
        };
        out.push((key.to_string(), Some(value)));
    }
    Ok(out)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.as_bytes()[0].is_ascii_digit()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vars() -> Variables {
        let mut v = Variables::default();
        v.shell.insert("USER".into(), "ada".into());
        v.shell.insert("EMPTY".into(), String::new());
        v.dotenv.insert("USER".into(), "bob".into());
        v.dotenv.insert("TAG".into(), "1.2".into());
        v
    }

    fn run(s: &str) -> (Result<String, Problem>, Vec<String>) {
        let mut unset = Vec::new();
        let r = interpolate(s, &vars(), &mut unset);
        (r, unset)
    }

    #[test]
    fn compose_forms() {
        assert_eq!(run("img:${TAG}").0.unwrap(), "img:1.2");
        assert_eq!(run("$USER/$TAG").0.unwrap(), "ada/1.2");
        assert_eq!(run("${NOPE:-x}").0.unwrap(), "x");
        assert_eq!(run("${EMPTY:-x}").0.unwrap(), "x");
        assert_eq!(run("${EMPTY-x}").0.unwrap(), "");
        assert_eq!(run("${NOPE:-${TAG}}").0.unwrap(), "1.2");
        assert_eq!(run("${USER:+yes}").0.unwrap(), "yes");
        assert_eq!(run("${NOPE+yes}").0.unwrap(), "");
        assert_eq!(run("$$HOME and 5$").0.unwrap(), "$HOME and 5$");
        assert_eq!(run("${NOPE}x"), (Ok("x".into()), vec!["NOPE".into()]));
        assert_eq!(
            run("${NOPE:?set it in .env}").0,
            Err(Problem::Required("NOPE: set it in .env".into()))
        );
        assert!(matches!(run("${TAG").0, Err(Problem::Syntax(_))));
        assert!(matches!(run("${1X}").0, Err(Problem::Syntax(_))));
        assert!(matches!(run("${TAG:x}").0, Err(Problem::Syntax(_))));
    }

    #[test]
    fn env_files() {
        let parsed = parse_env_file(
            "# comment\nA=1\nexport B = two words # note\nC='a # b'\nD=\"x\\ny\"\nE\n\nF=\n",
        )
        .unwrap();
        let get = |k: &str| parsed.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("A").as_deref(), Some("1"));
        assert_eq!(get("B").as_deref(), Some("two words"));
        assert_eq!(get("C").as_deref(), Some("a # b"));
        assert_eq!(get("D").as_deref(), Some("x\ny"));
        assert_eq!(get("E"), None);
        assert_eq!(get("F").as_deref(), Some(""));
        assert_eq!(parse_env_file("A=1\n=2\n").unwrap_err().0, 2);
        assert_eq!(parse_env_file("A='open\n").unwrap_err().0, 1);
    }

    proptest! {
        /// Any text either interpolates or says what is wrong; text without `$` is unchanged.
        #[test]
        fn never_panics(s in ".{0,60}") {
            let mut unset = Vec::new();
            let r = interpolate(&s, &vars(), &mut unset);
            if !s.contains('$') {
                prop_assert_eq!(r.unwrap(), s);
            }
        }

        #[test]
        fn env_file_never_panics(s in "(?s).{0,80}") {
            let _ = parse_env_file(&s);
        }
    }
}
