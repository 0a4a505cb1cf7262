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

use super::{truth, Cx};
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

/// Most bytes one relative bind uploads: every machine keeps them.
pub(super) const MAX_UPLOAD_BYTES: u64 = 1024 * 1024;

impl Cx<'_> {
    /// A relative bind (`./conf:/etc/app`): the file, or every file under the folder, becomes
    /// a read-only file in the container (the folder's layout kept under the target), its
    /// content uploaded with the deploy like a config's.
    pub(super) fn upload_bind(
        &mut self,
        line: usize,
        path: &str,
        source: &str,
        target: &str,
        read_only: bool,
        out: &mut Vec<FileMount>,
    ) {
        let root = self.dir.join(source);
        let mut found = Vec::new();
        if let Err(e) = walk(&root, "", &mut found) {
            self.error_at(line, path, format!("{source:?}: {e}"));
            return;
        }
        if found.is_empty() {
            self.error_at(
                line,
                path,
                format!("{source:?} holds no file: nothing to upload"),
            );
            return;
        }
        let total: u64 = found.iter().map(|(_, c, _)| c.len() as u64).sum();
        if total > MAX_UPLOAD_BYTES || found.len() > uncloud_common::files::MAX_MOUNTS {
            self.error_at(
                line,
                path,
                format!(
                    "{source:?} is {total} bytes in {} files; a relative bind uploads at most \
                     {MAX_UPLOAD_BYTES} bytes in {} files (every machine keeps them): build them \
                     into the image, or use a volume",
                    found.len(),
                    uncloud_common::files::MAX_MOUNTS
                ),
            );
            return;
        }
        if !read_only {
            self.warnings.push(crate::project::Diagnostic {
                line,
                key: path.to_string(),
                message: format!(
                    "{source:?} is uploaded as a read-only copy: the container cannot change it, \
                     and a change here reaches it with the next `uc deploy`"
                ),
            });
        }
        for (relative, content, mode) in found {
            let digest = digest(&content);
            let name = if relative.is_empty() {
                source.trim_start_matches("./").to_string()
            } else {
                format!(
                    "{}/{relative}",
                    source.trim_start_matches("./").trim_end_matches('/')
                )
            };
            out.push(FileMount {
                name,
                target: if relative.is_empty() {
                    target.to_string()
                } else {
                    format!("{}/{relative}", target.trim_end_matches('/'))
                },
                digest: digest.clone(),
                // Root owns it in the container: readable (and executable, if it is here) by
                // every user there; never writable.
                mode: if mode & 0o111 != 0 { 0o555 } else { 0o444 },
                uid: 0,
                gid: 0,
                secret: false,
            });
            self.uploaded.insert(digest, content);
        }
    }
}

/// Every file under `path` (itself when it is a file), in name order: (path below the
/// root, content, permission bits).
fn walk(
    path: &std::path::Path,
    relative: &str,
    out: &mut Vec<(String, Vec<u8>, u32)>,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.is_file() {
        if meta.len() > MAX_FILE_BYTES as u64 {
            return Err(format!(
                "{} is {} bytes, more than the {MAX_FILE_BYTES} an uploaded file may have",
                path.display(),
                meta.len()
            ));
        }
        let content =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        out.push((
            relative.to_string(),
            content,
            meta.permissions().mode() & 0o777,
        ));
        return Ok(());
    }
    if !meta.is_dir() {
        return Err(format!("{} is neither a file nor a folder", path.display()));
    }
    if relative.split('/').count() > 16 {
        return Err(format!("{} is nested too deep", path.display()));
    }
    let mut names: Vec<String> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let below = if relative.is_empty() {
            name.clone()
        } else {
            format!("{relative}/{name}")
        };
        walk(&path.join(&name), &below, out)?;
        if out.len() > uncloud_common::files::MAX_MOUNTS {
            break; // the caller says why
        }
    }
    Ok(())
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
