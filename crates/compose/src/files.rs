//! `secrets:` and `configs:`, at the top (what each is made of) and in a service (where it
//! goes). Their contents are read here, on the machine that runs `uc deploy`, and travel to
//! the network by digest (`uncloud_common::files`); a container sees each as a read-only file.
//!
//! Sources: `file:` (relative to the Compose file's folder), `environment:` (a variable of the
//! shell or `.env`), and for configs `content:` (inline). `external:` names something Docker
//! Swarm keeps; Uncloud has no such store, so it is refused with what to do instead.

use std::collections::BTreeMap;

use uncloud_common::files::{digest, MAX_FILE_BYTES};
use uncloud_common::model::FileMount;

use super::Cx;
use crate::yaml::{Key, Node, Value};

/// Secrets or configs: the two differ in where they go by default and in `content:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    Secret,
    Config,
}

impl FileKind {
    fn key(self) -> &'static str {
        match self {
            FileKind::Secret => "secrets",
            FileKind::Config => "configs",
        }
    }

    /// Where a file goes without `target:`, or with a relative one: Compose's places.
    fn target(self, name_or_relative: &str) -> String {
        match self {
            FileKind::Secret => format!("/run/secrets/{name_or_relative}"),
            FileKind::Config => format!("/{name_or_relative}"),
        }
    }
}

/// The top-level definitions: name -> content.
pub(super) type FileDefs = BTreeMap<String, Vec<u8>>;

impl Cx<'_> {
    /// Top-level `secrets:` or `configs:`.
    pub(super) fn top_files(&mut self, v: &Node, kind: FileKind) -> FileDefs {
        let mut out = BTreeMap::new();
        let Some(entries) = v.as_map() else {
            if !matches!(v.value, Value::Null) {
                self.error_at(
                    v.line,
                    kind.key(),
                    format!("expected a mapping, found {}", v.kind()),
                );
            }
            return out;
        };
        for (k, def) in entries {
            let path = format!("{}.{}", kind.key(), k.text);
            let Some(fields) = def.as_map() else {
                self.error(k, &path, "expected a mapping with `file:`");
                continue;
            };
            let mut content = None;
            for (fk, fv) in fields {
                let fpath = format!("{path}.{}", fk.text);
                match fk.text.as_str() {
                    "file" => {
                        let Some(p) = self.string(fk, fv, &fpath) else {
                            continue;
                        };
                        let file = self.dir.join(&p);
                        match std::fs::metadata(&file) {
                            Ok(m) if m.len() > MAX_FILE_BYTES as u64 => self.error(
                                fk,
                                &fpath,
                                &format!(
                                    "{} is {} bytes, more than the {MAX_FILE_BYTES} a file may \
                                     have (every machine keeps it): put it in the image or a \
                                     volume",
                                    file.display(),
                                    m.len()
                                ),
                            ),
                            _ => match std::fs::read(&file) {
                                Ok(bytes) => content = Some(bytes),
                                Err(e) => self.error(
                                    fk,
                                    &fpath,
                                    &format!("cannot read {}: {e}", file.display()),
                                ),
                            },
                        }
                    }
                    "environment" => {
                        let Some(var) = self.string(fk, fv, &fpath) else {
                            continue;
                        };
                        match self.vars.get(&var) {
                            Some(value) => content = Some(value.as_bytes().to_vec()),
                            None => self.error(
                                fk,
                                &fpath,
                                &format!("${var} is not set (in the shell or .env)"),
                            ),
                        }
                    }
                    "content" if kind == FileKind::Config => {
                        if let Some(text) = self.string(fk, fv, &fpath) {
                            content = Some(text.into_bytes());
                        }
                    }
                    "external" if truth(fv) == Some(false) => {}
                    "external" => self.error(
                        fk,
                        &fpath,
                        "not supported: Uncloud has no store of its own to take it from; give \
                         `file:` or `environment:` and uc deploy stores it in the network",
                    ),
                    "name" => self.warn(
                        fk,
                        &fpath,
                        "ignored: the file is known by its key in this file",
                    ),
                    t if t.starts_with("x-") => {}
                    _ => self.error(
                        fk,
                        &fpath,
                        match kind {
                            FileKind::Secret => "not a key of a secret (file, environment)",
                            FileKind::Config => {
                                "not a key of a config (file, environment, content)"
                            }
                        },
                    ),
                }
            }
            match content {
                Some(c) if c.len() > MAX_FILE_BYTES => self.error(
                    k,
                    &path,
                    &format!("more than the {MAX_FILE_BYTES} bytes a file may have"),
                ),
                Some(c) => {
                    out.insert(k.text.clone(), c);
                }
                None if fields.iter().any(|(fk, _)| fk.text == "external") => {}
                None if self.errors.iter().any(|e| e.key.starts_with(&path)) => {}
                None => self.error(k, &path, "says nowhere what it holds: give `file:`"),
            }
        }
        out
    }

    /// A service's `secrets:` or `configs:`: each entry a name, or a mapping with `source`,
    /// `target`, `uid`, `gid`, `mode`.
    pub(super) fn service_files(
        &mut self,
        k: &Key,
        v: &Node,
        path: &str,
        kind: FileKind,
        defs: &FileDefs,
        out: &mut Vec<FileMount>,
    ) {
        let Value::Seq(items) = &v.value else {
            if !matches!(v.value, Value::Null) {
                self.error(k, path, "expected a list");
            }
            return;
        };
        for item in items {
            let mut m = FileMount {
                secret: kind == FileKind::Secret,
                ..Default::default()
            };
            let mut target = None;
            match &item.value {
                Value::Scalar { text, .. } => m.name = text.clone(),
                Value::Map(fields) => {
                    for (fk, fv) in fields {
                        let fpath = format!("{path}.{}", fk.text);
                        let Some(text) = self.string(fk, fv, &fpath) else {
                            continue;
                        };
                        match fk.text.as_str() {
                            "source" => m.name = text,
                            "target" => target = Some(text),
                            "uid" | "gid" => match text.parse::<u32>() {
                                Ok(n) if fk.text == "uid" => m.uid = n,
                                Ok(n) => m.gid = n,
                                Err(_) => self.error(fk, &fpath, "expected a numeric id"),
                            },
                            "mode" => match parse_mode(&text) {
                                Some(mode) => m.mode = mode,
                                None => self.error(
                                    fk,
                                    &fpath,
                                    "expected permission bits, octal (0440) or decimal (288)",
                                ),
                            },
                            t if t.starts_with("x-") => {}
                            _ => self.error(
                                fk,
                                &fpath,
                                "not a key here (source, target, uid, gid, mode)",
                            ),
                        }
                    }
                }
                _ => {
                    self.error_at(
                        item.line,
                        path,
                        format!("expected a name or a mapping, found {}", item.kind()),
                    );
                    continue;
                }
            }
            let Some(content) = defs.get(&m.name) else {
                self.error_at(
                    item.line,
                    path,
                    format!(
                        "no {} {:?} at the top of the file ({}: {}: file: …)",
                        &kind.key()[..kind.key().len() - 1],
                        m.name,
                        kind.key(),
                        m.name
                    ),
                );
                continue;
            };
            m.digest = digest(content);
            m.target = match target {
                Some(t) if t.starts_with('/') => t,
                Some(t) => kind.target(&t),
                None => kind.target(&m.name),
            };
            out.push(m);
        }
    }
}

fn truth(node: &Node) -> Option<bool> {
    super::truth(node)
}

/// `0440`, `0o440` (octal, as Compose files write modes) or `288` (decimal).
fn parse_mode(text: &str) -> Option<u32> {
    let mode = if let Some(octal) = text.strip_prefix("0o") {
        u32::from_str_radix(octal, 8).ok()?
    } else if text.len() > 1 && text.starts_with('0') {
        u32::from_str_radix(&text[1..], 8).ok()?
    } else {
        text.parse().ok()?
    };
    (mode <= 0o7777).then_some(mode)
}

#[cfg(test)]
mod tests {
    #[test]
    fn modes_are_octal_when_written_so() {
        assert_eq!(super::parse_mode("0440"), Some(0o440));
        assert_eq!(super::parse_mode("0o400"), Some(0o400));
        assert_eq!(super::parse_mode("288"), Some(0o440));
        assert_eq!(super::parse_mode("0"), Some(0));
        assert_eq!(super::parse_mode("0999"), None);
        assert_eq!(super::parse_mode("99999"), None);
    }
}
