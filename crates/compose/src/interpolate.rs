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

/// Defaults nested deeper than this (`${A:-${B:-${C…}}}`) are refused: a hostile file would
/// otherwise take the stack.
const MAX_NESTING: usize = 16;

/// Interpolates `text`. Variables that are unset and have no default become empty and are
/// named in `unset`, as Compose warns about them.
pub fn interpolate(
    text: &str,
    vars: &Variables,
    unset: &mut Vec<String>,
) -> Result<String, Problem> {
    interpolate_nested(text, vars, unset, 0)
}

fn interpolate_nested(
    text: &str,
    vars: &Variables,
    unset: &mut Vec<String>,
    depth: usize,
) -> Result<String, Problem> {
    if depth > MAX_NESTING {
        return Err(Problem::Syntax(format!(
            "`${{…}}` nested more than {MAX_NESTING} levels deep"
        )));
    }
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
            out.push_str(&expression(&r[..end], vars, unset, depth)?);
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

fn expression(
    expr: &str,
    vars: &Variables,
    unset: &mut Vec<String>,
    depth: usize,
) -> Result<String, Problem> {
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
        '-' => interpolate_nested(arg, vars, unset, depth + 1),
        '+' if set => interpolate_nested(arg, vars, unset, depth + 1),
        '+' => Ok(String::new()),
        '?' if set => Ok(value.unwrap_or_default().to_string()),
        '?' => {
            let message = interpolate_nested(arg, vars, unset, depth + 1)?;
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
/// values in single quotes taken as they are, in double quotes with `\n`, `\r`, `\t`, `\"`,
/// `\\` and `\$` escapes (another backslash stays), unquoted ones up to a ` #` comment and
/// trimmed. Unquoted and double-quoted values are interpolated as Compose does, from `vars`
/// and then the file's earlier lines. A line without `=` names a variable without a value
/// (the caller looks it up). Errors name the line.
pub fn parse_env_file(text: &str, vars: &Variables) -> Result<EnvPairs, (usize, String)> {
    // The caller's variables (shell, then .env) first, then this file's earlier lines.
    let mut lookup = Variables {
        shell: vars.shell.clone(),
        dotenv: BTreeMap::new(),
    };
    for (k, v) in &vars.dotenv {
        lookup.shell.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let expand = |value: &str, lookup: &Variables, n: usize| {
        interpolate(value, lookup, &mut Vec::new()).map_err(|p| match p {
            Problem::Required(m) | Problem::Syntax(m) => (n, m),
        })
    };
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
                        Some('r') => s.push('\r'),
                        Some('t') => s.push('\t'),
                        Some('"') => s.push('"'),
                        Some('\\') => s.push('\\'),
                        // `$$` keeps a literal dollar through the interpolation below.
                        Some('$') => s.push_str("$$"),
                        Some(c) => {
                            s.push('\\');
                            s.push(c);
                        }
                        None => break,
                    },
                    c => s.push(c),
                }
            }
            if !closed {
                return Err((
                    n,
                    "a double quote without its closing quote (a value spans one line; \
                     write line breaks as \\n)"
                        .to_string(),
                ));
            }
            expand(&s, &lookup, n)?
        } else {
            let v = value.split_once(" #").map_or(value, |(v, _)| v).trim_end();
            expand(v, &lookup, n)?
        };
        lookup.dotenv.insert(key.to_string(), value.clone());
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
        // Nested defaults a hostile file could stack up are refused, not followed.
        let deep = "${A:-".repeat(200_000) + &"}".repeat(200_000);
        assert!(matches!(run(&deep).0, Err(Problem::Syntax(m)) if m.contains("nested")));
        let ok = "${A:-".repeat(10) + "x" + &"}".repeat(10);
        assert_eq!(run(&ok).0.unwrap(), "x");
    }

    #[test]
    fn env_files() {
        let parsed = parse_env_file(
            "# comment\nA=1\nexport B = two words # note\nC='a # b'\nD=\"x\\ny\"\nE\n\nF=\n\
             G=${A}-${USER}\nH='${A}'\nI=\"C:\\data \\$A $$\"\nJ=\"${TAG:-none}\"\n",
            &vars(),
        )
        .unwrap();
        let get = |k: &str| parsed.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("A").as_deref(), Some("1"));
        assert_eq!(get("B").as_deref(), Some("two words"));
        assert_eq!(get("C").as_deref(), Some("a # b"));
        assert_eq!(get("D").as_deref(), Some("x\ny"));
        assert_eq!(get("E"), None);
        assert_eq!(get("F").as_deref(), Some(""));
        // Interpolated from the file's earlier lines and the caller's variables (the shell's
        // USER over the .env's), except in single quotes; unknown escapes keep their backslash.
        assert_eq!(get("G").as_deref(), Some("1-ada"));
        assert_eq!(get("H").as_deref(), Some("${A}"));
        assert_eq!(get("I").as_deref(), Some("C:\\data $A $"));
        assert_eq!(get("J").as_deref(), Some("1.2"));
        let none = Variables::default();
        assert_eq!(parse_env_file("A=1\n=2\n", &none).unwrap_err().0, 2);
        assert_eq!(parse_env_file("A='open\n", &none).unwrap_err().0, 1);
        assert_eq!(
            parse_env_file("A=1\nB=${NOPE:?needed}\n", &none)
                .unwrap_err()
                .0,
            2
        );
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
            let _ = parse_env_file(&s, &vars());
        }
    }
}
