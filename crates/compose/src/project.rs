//! A Compose file to Uncloud services: every key either becomes part of a
//! [`ServiceSpec`], is ignored with a warning that says why, or is refused with an error that
//! says what to do instead. Errors and warnings name the key and its line; all of a file's
//! errors are reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use uncloud_common::constraint::Constraint;
use uncloud_common::model::{to_dns_label, HealthCheck, ServiceSpec, MODE_GLOBAL};
use uncloud_common::ports::PublishedPort;

use crate::interpolate::{interpolate, parse_env_file, Problem, Variables};
use crate::units::{parse_bytes, parse_cpus, parse_duration_ms};
use crate::yaml::{self, Key, Node, Value};

#[path = "files.rs"]
mod files;
use files::{FileDefs, FileKind};

/// What `uc deploy` was given besides the file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `-p NAME`; else the file's `name:`, else its folder's name.
    pub project: Option<String>,
    /// `--profile`: services with `profiles:` are deployed only when one of theirs is active.
    pub profiles: Vec<String>,
    /// The environment `uc` runs in: it wins over `.env`, as in Compose.
    pub shell: BTreeMap<String, String>,
}

/// A file's services, ready to deploy.
#[derive(Debug, Clone)]
pub struct Project {
    pub name: String,
    /// Services in the order they start: each after those it depends on.
    pub services: Vec<ComposeService>,
    /// Services left out because none of their profiles is active.
    pub inactive: Vec<String>,
    pub warnings: Vec<Diagnostic>,
    /// The contents of the secrets and configs its services mount, to be stored in the
    /// network before they are deployed (their specs name them by digest).
    pub files: Vec<uncloud_common::model::StoredFile>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ComposeService {
    pub name: String,
    pub spec: ServiceSpec,
    /// Services this one starts after, and whether it waits for them to be healthy.
    pub depends_on: Vec<Dependency>,
    /// `pull_policy`: `always`, `missing` or `never`; empty for the default.
    pub pull: String,
    /// `deploy.update_config`: how a change is rolled out.
    pub update: UpdateConfig,
    pub line: usize,
}

/// How `uc deploy` rolls a changed service out (`deploy.update_config`). One container at a
/// time, always.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateConfig {
    /// `start-first`, `stop-first`, or empty for uc's default (start-first unless host ports
    /// or a volume force stop-first).
    pub order: String,
    /// `monitor`: how long a new container without a health check must keep running; 0 for
    /// uc's default (5 s).
    pub monitor_ms: u64,
    /// `failure_action: pause`: stop at a failed container instead of going back.
    pub no_rollback: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub service: String,
    pub healthy: bool,
}

/// One error or warning: where, which key, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    /// The key's path, `services.db.build`.
    pub key: String,
    pub message: String,
}

impl Diagnostic {
    /// `FILE:LINE: KEY: MESSAGE`, as compilers print them.
    pub fn at(&self, file: &Path) -> String {
        let key = if self.key.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.key)
        };
        format!("{}:{}: {key}{}", file.display(), self.line, self.message)
    }
}

/// Why a file cannot be deployed: every problem found, each with its line.
#[derive(Debug, Clone, thiserror::Error)]
pub struct LoadError {
    pub file: PathBuf,
    pub errors: Vec<Diagnostic>,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{} cannot be deployed ({n} problem{}):",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {}", e.at(&self.file))?;
        }
        Ok(())
    }
}

/// Reads `file` (and the `.env` beside it) into a project.
pub fn load(file: &Path, options: &Options) -> Result<Project, LoadError> {
    let fail = |line, message: String| LoadError {
        file: file.to_owned(),
        errors: vec![Diagnostic {
            line,
            key: String::new(),
            message,
        }],
    };
    let text =
        std::fs::read_to_string(file).map_err(|e| fail(0, format!("cannot read it: {e}")))?;
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut vars = Variables {
        shell: options.shell.clone(),
        ..Default::default()
    };
    let dotenv = dir.join(".env");
    if dotenv.exists() {
        let text = std::fs::read_to_string(&dotenv)
            .map_err(|e| fail(0, format!("cannot read {}: {e}", dotenv.display())))?;
        let pairs = parse_env_file(&text, &vars)
            .map_err(|(line, m)| fail(0, format!("{} line {line}: {m}", dotenv.display())))?;
        vars.dotenv = pairs
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
    }
    let folder = std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    parse(&text, dir, &folder, &vars, options).map_err(|errors| LoadError {
        file: file.to_owned(),
        errors,
    })
}

/// [`load`] on text already read: `dir` is where relative paths (`env_file`) start, `folder`
/// the project name when neither `-p` nor `name:` gives one.
pub fn parse(
    text: &str,
    dir: &Path,
    folder: &str,
    vars: &Variables,
    options: &Options,
) -> Result<Project, Vec<Diagnostic>> {
    let mut cx = Cx {
        errors: Vec::new(),
        warnings: Vec::new(),
        dir: dir.to_owned(),
        vars,
        uploaded: BTreeMap::new(),
    };
    let mut root = yaml::parse(text).map_err(|e| {
        vec![Diagnostic {
            line: e.line,
            key: String::new(),
            message: format!("not valid YAML: {}", e.message),
        }]
    })?;
    cx.interpolate(&mut root, "");
    let Some(top) = root.as_map() else {
        return Err(vec![Diagnostic {
            line: root.line,
            key: String::new(),
            message: format!(
                "a Compose file is a mapping with `services:`, not {}",
                root.kind()
            ),
        }]);
    };

    let mut services_node = None;
    let mut volumes = BTreeMap::new();
    let mut file_defs = FileDefsByKind::default();
    let mut name_key = None;
    for (k, v) in top {
        match k.text.as_str() {
            "services" => services_node = Some((k, v)),
            "name" => name_key = cx.string(k, v, "name"),
            "version" => cx.warn(k, "version", "obsolete in the Compose spec; ignored"),
            "volumes" => volumes = cx.top_volumes(v),
            "networks" => cx.warn(
                k,
                "networks",
                "ignored: every container of an Uncloud network reaches every other over the mesh, \
                 and names resolve per project (docs/services.md)",
            ),
            "secrets" => file_defs.secrets = cx.top_files(v, FileKind::Secret),
            "configs" => file_defs.configs = cx.top_files(v, FileKind::Config),
            t if t.starts_with("x-") => {}
            t => cx.error(k, t, "not a top-level key of the Compose spec"),
        }
    }

    // Compose's order: -p, COMPOSE_PROJECT_NAME (shell or .env), `name:`, the folder.
    let raw_name = options
        .project
        .clone()
        .or_else(|| vars.get("COMPOSE_PROJECT_NAME").map(str::to_string))
        .or(name_key)
        .unwrap_or_else(|| folder.to_string());
    let name = to_dns_label(&raw_name, 63);
    if name.is_empty() {
        cx.errors.push(Diagnostic {
            line: 1,
            key: "name".into(),
            message: format!(
                "no usable project name from {raw_name:?}: give one with -p NAME or `name:`"
            ),
        });
    } else if name == "lb" || name == "machine" {
        cx.errors.push(Diagnostic {
            line: 1,
            key: "name".into(),
            message: format!("`{name}` is reserved in DNS names; choose another with -p NAME"),
        });
    }

    let mut services = Vec::new();
    let mut inactive = Vec::new();
    match services_node {
        None => cx.errors.push(Diagnostic {
            line: 1,
            key: "services".into(),
            message: "missing: a Compose file lists its services under `services:`".into(),
        }),
        Some((k, v)) => match v.as_map() {
            None => cx.error(
                k,
                "services",
                &format!("expected a mapping of services, found {}", v.kind()),
            ),
            Some(entries) => {
                for (key, node) in entries {
                    if let Some(s) = cx.service(
                        key,
                        node,
                        &name,
                        &volumes,
                        &file_defs,
                        options,
                        &mut inactive,
                    ) {
                        services.push(s);
                    }
                }
            }
        },
    }
    let services = cx.order(services, &inactive);
    if !cx.errors.is_empty() {
        cx.errors.sort_by_key(|d| d.line);
        return Err(cx.errors);
    }
    let mut files = file_defs.stored(&services);
    for (digest, content) in std::mem::take(&mut cx.uploaded) {
        if !files.iter().any(|f| f.digest == digest) {
            files.push(uncloud_common::files::stored(&content, 0));
        }
    }
    Ok(Project {
        name,
        services,
        inactive,
        warnings: cx.warnings,
        files,
    })
}

/// The file's top-level `secrets:` and `configs:`.
#[derive(Default)]
struct FileDefsByKind {
    secrets: FileDefs,
    configs: FileDefs,
}

impl FileDefsByKind {
    /// The contents `services` mount, each once.
    fn stored(&self, services: &[ComposeService]) -> Vec<uncloud_common::model::StoredFile> {
        let by_digest: BTreeMap<String, &Vec<u8>> = self
            .secrets
            .values()
            .chain(self.configs.values())
            .map(|c| (uncloud_common::files::digest(c), c))
            .collect();
        let wanted: BTreeSet<&str> = services
            .iter()
            .flat_map(|s| s.spec.files.iter().map(|f| f.digest.as_str()))
            .collect();
        wanted
            .into_iter()
            .filter_map(|d| by_digest.get(d))
            .map(|c| uncloud_common::files::stored(c, 0))
            .collect()
    }
}

/// A named volume of the file: what Docker calls it.
#[derive(Debug, Clone)]
struct VolumeDef {
    /// `<project>_<name>` unless `name:` or `external:` says otherwise; `None` for the
    /// project prefix to be added.
    docker_name: Option<String>,
}

struct Cx<'a> {
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    dir: PathBuf,
    vars: &'a Variables,
    /// Contents of files under relative binds, by digest (`files::upload_bind`).
    uploaded: BTreeMap<String, Vec<u8>>,
}

impl Cx<'_> {
    fn error(&mut self, k: &Key, path: &str, message: &str) {
        self.errors.push(Diagnostic {
            line: k.line,
            key: path.to_string(),
            message: message.to_string(),
        });
    }

    fn error_at(&mut self, line: usize, path: &str, message: String) {
        self.errors.push(Diagnostic {
            line,
            key: path.to_string(),
            message,
        });
    }

    fn warn(&mut self, k: &Key, path: &str, message: &str) {
        self.warnings.push(Diagnostic {
            line: k.line,
            key: path.to_string(),
            message: message.to_string(),
        });
    }

    /// Interpolates every value (never a key), as Compose does before reading the file.
    fn interpolate(&mut self, node: &mut Node, path: &str) {
        match &mut node.value {
            Value::Scalar { text, .. } => {
                let mut unset = Vec::new();
                match interpolate(text, self.vars, &mut unset) {
                    Ok(t) => *text = t,
                    Err(Problem::Required(m)) => self.error_at(node.line, path, m),
                    Err(Problem::Syntax(m)) => self.error_at(node.line, path, m),
                }
                for v in unset {
                    self.warnings.push(Diagnostic {
                        line: node.line,
                        key: path.to_string(),
                        message: format!("${v} is not set (in the shell or .env): it is blank"),
                    });
                }
            }
            Value::Seq(items) => {
                for item in items {
                    self.interpolate(item, path);
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    let p = if path.is_empty() {
                        k.text.clone()
                    } else {
                        format!("{path}.{}", k.text)
                    };
                    self.interpolate(v, &p);
                }
            }
            Value::Null => {}
        }
    }

    fn string(&mut self, k: &Key, v: &Node, path: &str) -> Option<String> {
        match &v.value {
            Value::Scalar { text, .. } => Some(text.clone()),
            _ => {
                self.error(
                    k,
                    path,
                    &format!("expected a single value, found {}", v.kind()),
                );
                None
            }
        }
    }

    /// A list of single values, or one single value as a list of one.
    fn strings(&mut self, k: &Key, v: &Node, path: &str) -> Vec<String> {
        match &v.value {
            Value::Scalar { text, .. } => vec![text.clone()],
            Value::Null => Vec::new(),
            Value::Seq(items) => items
                .iter()
                .filter_map(|i| match i.as_str() {
                    Some(s) => Some(s.to_string()),
                    None => {
                        self.error_at(
                            i.line,
                            path,
                            format!("expected a single value, found {}", i.kind()),
                        );
                        None
                    }
                })
                .collect(),
            Value::Map(_) => {
                self.error(k, path, "expected a list, found a mapping");
                Vec::new()
            }
        }
    }

    /// `KEY=VALUE` list or `KEY: VALUE` mapping; `None` for a key without a value.
    fn key_values(
        &mut self,
        k: &Key,
        v: &Node,
        path: &str,
    ) -> Vec<(String, Option<String>, usize)> {
        match &v.value {
            Value::Seq(items) => items
                .iter()
                .filter_map(|i| match i.as_str() {
                    Some(s) => Some(match s.split_once('=') {
                        Some((a, b)) => (a.to_string(), Some(b.to_string()), i.line),
                        None => (s.to_string(), None, i.line),
                    }),
                    None => {
                        self.error_at(
                            i.line,
                            path,
                            format!("expected KEY=VALUE, found {}", i.kind()),
                        );
                        None
                    }
                })
                .collect(),
            Value::Map(entries) => entries
                .iter()
                .filter_map(|(ek, ev)| match &ev.value {
                    Value::Null => Some((ek.text.clone(), None, ek.line)),
                    Value::Scalar { text, .. } => {
                        Some((ek.text.clone(), Some(text.clone()), ek.line))
                    }
                    _ => {
                        self.error(
                            ek,
                            &format!("{path}.{}", ek.text),
                            "expected a single value",
                        );
                        None
                    }
                })
                .collect(),
            Value::Null => Vec::new(),
            Value::Scalar { .. } => {
                self.error(k, path, "expected a list of KEY=VALUE or a mapping");
                Vec::new()
            }
        }
    }

    fn top_volumes(&mut self, v: &Node) -> BTreeMap<String, VolumeDef> {
        let mut out = BTreeMap::new();
        let Some(entries) = v.as_map() else {
            if !matches!(v.value, Value::Null) {
                self.error_at(
                    v.line,
                    "volumes",
                    format!("expected a mapping, found {}", v.kind()),
                );
            }
            return out;
        };
        for (k, def) in entries {
            let path = format!("volumes.{}", k.text);
            let mut docker_name = None;
            let mut external = false;
            if let Some(fields) = def.as_map() {
                for (fk, fv) in fields {
                    let fpath = format!("{path}.{}", fk.text);
                    match fk.text.as_str() {
                        "name" => docker_name = self.string(fk, fv, &fpath),
                        "external" => match truth(fv) {
                            Some(b) => external = b,
                            None => self.error(fk, &fpath, "expected true or false"),
                        },
                        "driver" if fv.as_str() == Some("local") => {}
                        "labels" => self.warn(fk, &fpath, "ignored: volumes are made by Docker on first use"),
                        "driver" | "driver_opts" => self.error(
                            fk,
                            &fpath,
                            "not supported: volumes are Docker's local volumes on the machine that runs the container",
                        ),
                        t if t.starts_with("x-") => {}
                        _ => self.error(fk, &fpath, "not a key of a volume"),
                    }
                }
            } else if !matches!(def.value, Value::Null) {
                self.error(k, &path, "expected a mapping or nothing");
            }
            if external && docker_name.is_none() {
                docker_name = Some(k.text.clone());
            }
            out.insert(k.text.clone(), VolumeDef { docker_name });
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn service(
        &mut self,
        key: &Key,
        node: &Node,
        project: &str,
        volumes: &BTreeMap<String, VolumeDef>,
        file_defs: &FileDefsByKind,
        options: &Options,
        inactive: &mut Vec<String>,
    ) -> Option<ComposeService> {
        let name = key.text.clone();
        let base = format!("services.{name}");
        let Some(entries) = node.as_map() else {
            self.error(
                key,
                &base,
                &format!("expected a mapping, found {}", node.kind()),
            );
            return None;
        };
        if to_dns_label(&name, 63) != name || name == "lb" || name == "machine" {
            self.error(
                key,
                &base,
                "a service name is a DNS label here (lowercase letters, digits and '-', not `lb` or \
                 `machine`): rename it",
            );
        }
        if let Some((pk, pv)) = entries.iter().find(|(k, _)| k.text == "profiles") {
            let profiles = self.strings(pk, pv, &format!("{base}.profiles"));
            if !profiles.iter().any(|p| options.profiles.contains(p)) {
                inactive.push(name);
                return None;
            }
        }
        let mut spec = ServiceSpec {
            replicas: 1,
            ..Default::default()
        };
        let mut depends_on = Vec::new();
        let mut pull = String::new();
        let mut update = UpdateConfig::default();
        let mut env_files: Vec<(PathBuf, bool, usize)> = Vec::new();
        let mut environment = Vec::new();
        let mut has_image = false;
        let has_restart_policy = entries.iter().any(|(k, v)| {
            k.text == "deploy"
                && v.as_map()
                    .is_some_and(|m| m.iter().any(|(f, _)| f.text == "restart_policy"))
        });
        for (k, v) in entries {
            let path = format!("{base}.{}", k.text);
            match k.text.as_str() {
                "image" => {
                    if let Some(s) = self.string(k, v, &path) {
                        spec.image = s;
                        has_image = true;
                    }
                }
                "build" => self.error(
                    k,
                    &path,
                    "uc does not build images: build it (docker build -t NAME .), push it to a \
                     registry the machines reach, and set `image: NAME`",
                ),
                "command" | "entrypoint" => {
                    let args = match &v.value {
                        Value::Scalar { text, .. } => match split_shell(text) {
                            Ok(a) => a,
                            Err(m) => {
                                self.error(k, &path, &m);
                                continue;
                            }
                        },
                        Value::Null => Vec::new(),
                        _ => self.strings(k, v, &path),
                    };
                    if args.is_empty() && !matches!(v.value, Value::Null) {
                        // Compose clears the image's entrypoint or command then; uc would keep it.
                        self.error(
                            k,
                            &path,
                            "an empty one is not supported (uc would keep the image's): give \
                             the arguments, or leave the key out",
                        );
                        continue;
                    }
                    if k.text == "command" {
                        spec.command = args;
                    } else {
                        spec.entrypoint = args;
                    }
                }
                "environment" => environment = self.key_values(k, v, &path),
                "env_file" => {
                    let items: Vec<(String, bool, usize)> = match &v.value {
                        Value::Seq(items) => items
                            .iter()
                            .filter_map(|i| match &i.value {
                                Value::Scalar { text, .. } => Some((text.clone(), true, i.line)),
                                Value::Map(fields) => {
                                    let get = |n: &str| {
                                        fields
                                            .iter()
                                            .find(|(fk, _)| fk.text == n)
                                            .and_then(|(_, fv)| fv.as_str())
                                    };
                                    match get("path") {
                                        Some(p) => Some((
                                            p.to_string(),
                                            !matches!(
                                                get("required"),
                                                Some("false" | "False" | "FALSE")
                                            ),
                                            i.line,
                                        )),
                                        None => {
                                            self.error_at(
                                                i.line,
                                                &path,
                                                "an env_file entry needs `path:`".into(),
                                            );
                                            None
                                        }
                                    }
                                }
                                _ => None,
                            })
                            .collect(),
                        Value::Scalar { text, .. } => vec![(text.clone(), true, v.line)],
                        _ => {
                            self.error(k, &path, "expected a file name or a list of them");
                            Vec::new()
                        }
                    };
                    env_files.extend(items.into_iter().map(|(p, r, l)| (self.dir.join(p), r, l)));
                }
                "ports" => {
                    if let Value::Seq(items) = &v.value {
                        for i in items {
                            match port(i) {
                                Ok(p) => spec.publish.push(p),
                                Err(m) => self.error_at(i.line, &path, m),
                            }
                        }
                    } else {
                        self.error(k, &path, "expected a list");
                    }
                }
                "x-ports" => {
                    for p in self.strings(k, v, &path) {
                        // `…@host` binds the port on the machine (Uncloud's host mode).
                        match uncloud_common::ports::host_mode(&p) {
                            Some(Ok(docker)) => spec.publish.push(docker),
                            Some(Err(e)) => self.error(k, &path, &e.to_string()),
                            None => match PublishedPort::parse(&p) {
                                Ok(_) => spec.ports.push(p),
                                Err(e) => self.error(k, &path, &format!("{p:?}: {e}")),
                            },
                        }
                    }
                }
                "expose" => {}
                "volumes" => {
                    if let Value::Seq(items) = &v.value {
                        for i in items {
                            match volume(i, project, volumes) {
                                Ok(VolumeEntry::Mount(m)) => spec.volumes.push(m),
                                Ok(VolumeEntry::Upload {
                                    source,
                                    target,
                                    read_only,
                                }) => self.upload_bind(
                                    i.line,
                                    &path,
                                    &source,
                                    &target,
                                    read_only,
                                    &mut spec.files,
                                ),
                                Err(m) => self.error_at(i.line, &path, m),
                            }
                        }
                    } else {
                        self.error(k, &path, "expected a list");
                    }
                }
                "healthcheck" => spec.healthcheck = self.healthcheck(k, v, &path),
                "restart" => {
                    if let Some(r) = self.string(k, v, &path) {
                        match restart(&r) {
                            // `deploy.restart_policy` wins, as in Compose.
                            Ok(_) if has_restart_policy => {}
                            Ok(r) => spec.restart = r,
                            Err(m) => self.error(k, &path, &m),
                        }
                    }
                }
                "deploy" => self.deploy(k, v, &path, &mut spec, &mut update),
                "labels" => {
                    for (lk, lv, _) in self.key_values(k, v, &path) {
                        spec.labels.insert(lk, lv.unwrap_or_default());
                    }
                }
                "user" => spec.user = self.string(k, v, &path).unwrap_or_default(),
                // With `deploy.placement.constraints` on `node.hostname`, the machines of both.
                "x-machines" => spec.machines.extend(self.strings(k, v, &path)),
                "depends_on" => depends_on = self.depends_on(k, v, &path),
                "pull_policy" => match self.string(k, v, &path).as_deref() {
                    Some("always") => pull = "always".into(),
                    Some("missing" | "if_not_present") => pull = "missing".into(),
                    Some("never") => pull = "never".into(),
                    Some(other) => self.error(
                        k,
                        &path,
                        &format!("{other:?}: expected always, missing or never"),
                    ),
                    None => {}
                },
                "profiles" => {}
                "container_name" => self.warn(
                    k,
                    &path,
                    "ignored: Uncloud names containers <project>-<service>-<id>; other containers \
                     reach this one as the service's name",
                ),
                "networks" => self.warn(
                    k,
                    &path,
                    "ignored: every container reaches every other over the mesh; the project's \
                     services resolve by their bare names",
                ),
                "hostname" | "domainname" => {
                    self.warn(k, &path, "ignored: the container's name is its host name")
                }
                "stop_signal" => spec.stop_signal = self.string(k, v, &path).unwrap_or_default(),
                "stop_grace_period" => {
                    if let Some(text) = self.string(k, v, &path) {
                        match parse_duration_ms(&text) {
                            Ok(ms) => spec.stop_grace_ms = ms,
                            Err(m) => self.error(k, &path, &m),
                        }
                    }
                }
                "cap_add" => spec.cap_add = self.strings(k, v, &path),
                "cap_drop" => spec.cap_drop = self.strings(k, v, &path),
                "sysctls" => {
                    for (sk, sv, line) in self.key_values(k, v, &path) {
                        match sv {
                            Some(sv) => {
                                spec.sysctls.insert(sk, sv);
                            }
                            None => self.error_at(
                                line,
                                &path,
                                format!("{sk}: a sysctl needs a value (NAME=VALUE)"),
                            ),
                        }
                    }
                }
                "logging" => self.warn(
                    k,
                    &path,
                    "ignored: containers log with Docker's default driver",
                ),
                "tty" | "stdin_open" => {
                    self.warn(k, &path, "ignored: containers run without a terminal")
                }
                "network_mode" => self.error(
                    k,
                    &path,
                    "not supported: containers live on the mesh network (use `ports:` to publish \
                     on the machine's own address)",
                ),
                "privileged" | "devices" | "security_opt" => self.error(
                    k,
                    &path,
                    "not supported yet: it would change what the container may do; run the \
                     container with docker on the machine meanwhile",
                ),
                "secrets" => self.service_files(
                    k,
                    v,
                    &path,
                    FileKind::Secret,
                    &file_defs.secrets,
                    &mut spec.files,
                ),
                "configs" => self.service_files(
                    k,
                    v,
                    &path,
                    FileKind::Config,
                    &file_defs.configs,
                    &mut spec.files,
                ),
                "extends" => self.error(
                    k,
                    &path,
                    "not supported: copy the settings, or share them with a YAML anchor",
                ),
                t if t.starts_with("x-") => {}
                _ => self.error(
                    k,
                    &path,
                    "not supported by uc deploy (docs/services.md lists the keys it reads)",
                ),
            }
        }
        if !has_image && !entries.iter().any(|(k, _)| k.text == "build") {
            self.error(key, &base, "no `image:`");
        }
        if let Err(e) = uncloud_common::files::validate_mounts(&spec.files) {
            self.error(key, &base, &format!("secrets and configs: {e}"));
        }
        // Compose's precedence: `environment` over `env_file`, later files over earlier.
        for (file, required, line) in env_files {
            match std::fs::read_to_string(&file) {
                Ok(text) => match parse_env_file(&text, self.vars) {
                    Ok(pairs) => {
                        for (k, v) in pairs {
                            let v = v.or_else(|| self.vars.get(&k).map(str::to_string));
                            if let Some(v) = v {
                                spec.env.insert(k, v);
                            }
                        }
                    }
                    Err((l, m)) => self.error_at(
                        line,
                        &format!("{base}.env_file"),
                        format!("{} line {l}: {m}", file.display()),
                    ),
                },
                Err(_) if !required => {}
                Err(e) => self.error_at(
                    line,
                    &format!("{base}.env_file"),
                    format!("cannot read {}: {e}", file.display()),
                ),
            }
        }
        for (k, v, _) in environment {
            // `KEY` alone takes the value from the shell or .env, or stays unset.
            if let Some(v) = v.or_else(|| self.vars.get(&k).map(str::to_string)) {
                spec.env.insert(k, v);
            }
        }
        Some(ComposeService {
            name,
            spec,
            depends_on,
            pull,
            update,
            line: key.line,
        })
    }

    fn healthcheck(&mut self, k: &Key, v: &Node, path: &str) -> Option<HealthCheck> {
        let fields = self.mapping(k, v, path)?;
        let mut h = HealthCheck::default();
        for (fk, fv) in fields {
            let fpath = format!("{path}.{}", fk.text);
            match fk.text.as_str() {
                "test" => {
                    h.test = match &fv.value {
                        Value::Scalar { text, .. } => vec!["CMD-SHELL".into(), text.clone()],
                        _ => self.strings(fk, fv, &fpath),
                    };
                    if !matches!(
                        h.test.first().map(String::as_str),
                        Some("CMD" | "CMD-SHELL" | "NONE")
                    ) {
                        self.error(fk, &fpath, "a list starts with CMD, CMD-SHELL or NONE");
                    }
                }
                "disable" if truth(fv) == Some(true) => h.test = vec!["NONE".into()],
                "disable" => {}
                "interval" | "timeout" | "start_period" => {
                    let Some(s) = self.string(fk, fv, &fpath) else {
                        continue;
                    };
                    match parse_duration_ms(&s) {
                        Ok(ms) => match fk.text.as_str() {
                            "interval" => h.interval_ms = ms,
                            "timeout" => h.timeout_ms = ms,
                            _ => h.start_period_ms = ms,
                        },
                        Err(m) => self.error(fk, &fpath, &m),
                    }
                }
                "start_interval" => self.warn(fk, &fpath, "ignored: checks run every `interval`"),
                "retries" => match fv.as_str().map(str::parse::<u32>) {
                    Some(Ok(n)) => h.retries = n,
                    _ => self.error(fk, &fpath, "expected a whole number"),
                },
                _ => self.error(fk, &fpath, "not a key of a healthcheck"),
            }
        }
        if h.test.is_empty() {
            self.error(k, path, "a healthcheck needs `test:` (or `disable: true`)");
            return None;
        }
        Some(h)
    }

    fn deploy(
        &mut self,
        k: &Key,
        v: &Node,
        path: &str,
        spec: &mut ServiceSpec,
        update: &mut UpdateConfig,
    ) {
        let Some(fields) = self.mapping(k, v, path) else {
            return;
        };
        let mut replicas = None;
        for (fk, fv) in fields {
            let fpath = format!("{path}.{}", fk.text);
            match fk.text.as_str() {
                "replicas" => match fv.as_str().map(str::parse::<u32>) {
                    Some(Ok(0)) => self.error(
                        fk,
                        &fpath,
                        "0 is not supported by uc deploy: leave the service out of the file, or \
                         `uc scale NAME 0` after deploying",
                    ),
                    Some(Ok(n)) if n <= 1000 => replicas = Some((n, fk.clone())),
                    _ => self.error(fk, &fpath, "expected a whole number up to 1000"),
                },
                "mode" => match fv.as_str() {
                    Some("replicated") => {}
                    Some("global") => spec.mode = MODE_GLOBAL.into(),
                    _ => self.error(fk, &fpath, "expected replicated or global"),
                },
                "resources" => self.resources(fk, fv, &fpath, spec),
                "placement" => self.placement(fk, fv, &fpath, spec),
                "restart_policy" => {
                    let condition = fv
                        .as_map()
                        .and_then(|m| m.iter().find(|(c, _)| c.text == "condition"))
                        .and_then(|(_, c)| c.as_str());
                    match condition {
                        Some("none") => spec.restart = "no".into(),
                        Some("on-failure") => spec.restart = "on-failure".into(),
                        Some("any") | None => spec.restart = "always".into(),
                        Some(other) => self.error(
                            fk,
                            &fpath,
                            &format!("{other:?}: expected none, on-failure or any"),
                        ),
                    }
                }
                "update_config" => self.update_config(fk, fv, &fpath, update),
                "rollback_config" => self.warn(
                    fk,
                    &fpath,
                    "ignored: going back rolls out the previous spec the way `update_config` says",
                ),
                "labels" | "endpoint_mode" => self.warn(fk, &fpath, "ignored (a Swarm setting)"),
                t if t.starts_with("x-") => {}
                _ => self.error(fk, &fpath, "not a key of `deploy`"),
            }
        }
        if let Some((n, fk)) = replicas {
            if spec.is_global() {
                self.error(
                    &fk,
                    &format!("{path}.replicas"),
                    "a global service has one container per machine: drop `replicas`",
                );
            } else {
                spec.replicas = n;
            }
        }
        if spec.is_global() {
            spec.replicas = 0;
        }
    }

    /// The entries of `v`, or an error at `k` when it is not a mapping.
    fn mapping<'n>(&mut self, k: &Key, v: &'n Node, path: &str) -> Option<&'n [(Key, Node)]> {
        let fields = v.as_map();
        if fields.is_none() {
            self.error(k, path, "expected a mapping");
        }
        fields
    }

    fn update_config(&mut self, k: &Key, v: &Node, path: &str, update: &mut UpdateConfig) {
        let Some(fields) = self.mapping(k, v, path) else {
            return;
        };
        for (fk, fv) in fields {
            let fpath = format!("{path}.{}", fk.text);
            match fk.text.as_str() {
                "order" => match fv.as_str() {
                    Some(o @ ("start-first" | "stop-first")) => update.order = o.into(),
                    _ => self.error(fk, &fpath, "expected start-first or stop-first"),
                },
                "monitor" => {
                    if let Some(s) = self.string(fk, fv, &fpath) {
                        match parse_duration_ms(&s) {
                            Ok(ms) => update.monitor_ms = ms,
                            Err(m) => self.error(fk, &fpath, &m),
                        }
                    }
                }
                "failure_action" => match fv.as_str() {
                    Some("rollback") => update.no_rollback = false,
                    Some("pause") => update.no_rollback = true,
                    Some("continue") => self.error(
                        fk,
                        &fpath,
                        "not supported: uc deploy stops at the first container that fails \
                         (rollback, the default, or pause)",
                    ),
                    _ => self.error(fk, &fpath, "expected rollback or pause"),
                },
                "parallelism" => {
                    if fv.as_str() != Some("1") {
                        self.warn(
                            fk,
                            &fpath,
                            "ignored: uc deploy replaces one container at a time",
                        );
                    }
                }
                "delay" | "max_failure_ratio" => {
                    self.warn(fk, &fpath, "ignored: uc deploy stops at the first failure")
                }
                _ => self.error(fk, &fpath, "not a key of `update_config`"),
            }
        }
    }

    fn resources(&mut self, k: &Key, v: &Node, path: &str, spec: &mut ServiceSpec) {
        let Some(fields) = self.mapping(k, v, path) else {
            return;
        };
        for (fk, fv) in fields {
            let fpath = format!("{path}.{}", fk.text);
            match fk.text.as_str() {
                "limits" => {
                    let Some(limits) = fv.as_map() else {
                        self.error(fk, &fpath, "expected a mapping (cpus, memory)");
                        continue;
                    };
                    for (lk, lv) in limits {
                        let lpath = format!("{fpath}.{}", lk.text);
                        let Some(s) = self.string(lk, lv, &lpath) else { continue };
                        match lk.text.as_str() {
                            "cpus" => match parse_cpus(&s) {
                                Ok(m) => spec.cpu_millis = m,
                                Err(m) => self.error(lk, &lpath, &m),
                            },
                            "memory" => match parse_bytes(&s) {
                                Ok(b) => spec.memory_bytes = b,
                                Err(m) => self.error(lk, &lpath, &m),
                            },
                            "pids" => self.warn(lk, &lpath, "ignored: no pids limit yet"),
                            _ => self.error(lk, &lpath, "expected cpus or memory"),
                        }
                    }
                }
                "reservations" => self.warn(
                    fk,
                    &fpath,
                    "ignored: placement does not reserve resources yet (it spreads by container count)",
                ),
                _ => self.error(fk, &fpath, "expected limits or reservations"),
            }
        }
    }

    fn placement(&mut self, k: &Key, v: &Node, path: &str, spec: &mut ServiceSpec) {
        let Some(fields) = self.mapping(k, v, path) else {
            return;
        };
        for (fk, fv) in fields {
            let fpath = format!("{path}.{}", fk.text);
            match fk.text.as_str() {
                "constraints" => {
                    for c in self.strings(fk, fv, &fpath) {
                        let compact: String = c.chars().filter(|c| !c.is_whitespace()).collect();
                        if let Some(host) = compact.strip_prefix("node.hostname==") {
                            // A pin by machine, as x-machines (kept by id across renames).
                            spec.machines.push(host.to_string());
                        } else {
                            match Constraint::parse(&c) {
                                Ok(k) => spec.constraints.push(k.to_string()),
                                Err(e) => self.error(fk, &fpath, &e),
                            }
                        }
                    }
                }
                "preferences" | "max_replicas_per_node" => self.error(
                    fk,
                    &fpath,
                    "not supported: replicas spread over the eligible machines",
                ),
                _ => self.error(fk, &fpath, "expected constraints"),
            }
        }
    }

    fn depends_on(&mut self, k: &Key, v: &Node, path: &str) -> Vec<Dependency> {
        match &v.value {
            Value::Map(entries) => entries
                .iter()
                .map(|(dk, dv)| {
                    let condition = dv
                        .as_map()
                        .and_then(|m| m.iter().find(|(c, _)| c.text == "condition"))
                        .and_then(|(_, c)| c.as_str())
                        .unwrap_or("service_started");
                    let healthy = match condition {
                        "service_started" => false,
                        "service_healthy" => true,
                        other => {
                            self.error(
                                dk,
                                &format!("{path}.{}.condition", dk.text),
                                &format!("{other:?}: expected service_started or service_healthy"),
                            );
                            false
                        }
                    };
                    Dependency {
                        service: dk.text.clone(),
                        healthy,
                    }
                })
                .collect(),
            _ => self
                .strings(k, v, path)
                .into_iter()
                .map(|service| Dependency {
                    service,
                    healthy: false,
                })
                .collect(),
        }
    }

    /// Orders services so each comes after those it depends on (file order otherwise).
    fn order(&mut self, services: Vec<ComposeService>, inactive: &[String]) -> Vec<ComposeService> {
        let names: BTreeSet<String> = services.iter().map(|s| s.name.clone()).collect();
        let mut bad = Vec::new();
        for s in &services {
            for d in &s.depends_on {
                if !names.contains(&d.service) {
                    let why = if inactive.contains(&d.service) {
                        "is in no active profile (add --profile)"
                    } else {
                        "is not a service of this file"
                    };
                    bad.push((
                        s.line,
                        format!("services.{}.depends_on", s.name),
                        format!("{} {why}", d.service),
                    ));
                }
            }
        }
        for (line, key, m) in bad {
            self.error_at(line, &key, m);
        }
        let mut done: Vec<ComposeService> = Vec::new();
        let mut left = services;
        while !left.is_empty() {
            let ready = left.iter().position(|s| {
                s.depends_on.iter().all(|d| {
                    done.iter().any(|x| x.name == d.service) || !names.contains(&d.service)
                })
            });
            match ready {
                Some(i) => done.push(left.remove(i)),
                None => {
                    let cycle: Vec<&str> = left.iter().map(|s| s.name.as_str()).collect();
                    self.error_at(
                        left[0].line,
                        &format!("services.{}.depends_on", left[0].name),
                        format!(
                            "these services depend on each other in a cycle: {}",
                            cycle.join(", ")
                        ),
                    );
                    done.append(&mut left);
                }
            }
        }
        done
    }
}

/// A YAML boolean as Compose reads it (`true`, `True`, `TRUE` and the same for false).
fn truth(node: &Node) -> Option<bool> {
    match node.as_str()? {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// `restart:` values; `on-failure:N` loses its N (Docker's count is not kept).
fn restart(r: &str) -> Result<String, String> {
    match r {
        "no" | "always" | "on-failure" | "unless-stopped" => Ok(r.to_string()),
        r if r.starts_with("on-failure:") => Ok("on-failure".into()),
        _ => Err(format!(
            "{r:?}: expected no, always, on-failure or unless-stopped"
        )),
    }
}

/// A `ports:` entry to `[ip:]host:container[/proto]`.
fn port(node: &Node) -> Result<String, String> {
    let (ip, host, container, proto) = match &node.value {
        Value::Scalar { text, .. } => {
            let (ports, proto) = match text.rsplit_once('/') {
                Some((p, proto)) => (p, proto.to_string()),
                None => (text.as_str(), "tcp".to_string()),
            };
            let parts: Vec<&str> = ports.rsplitn(3, ':').collect();
            match parts.as_slice() {
                [_] => {
                    return Err(format!(
                    "{text:?} publishes on a random host port: write HOST:CONTAINER (8080:80), or \
                         use x-ports to serve it through ingress"
                ))
                }
                [c, h] => (String::new(), h.to_string(), c.to_string(), proto),
                [c, h, ip] => (ip.to_string(), h.to_string(), c.to_string(), proto),
                _ => unreachable!("rsplitn(3) gives one to three parts"),
            }
        }
        Value::Map(fields) => {
            let get = |n: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k.text == n)
                    .and_then(|(_, v)| v.as_str())
            };
            let Some(published) = get("published") else {
                return Err(
                    "a port without `published:` would take a random host port: give one".into(),
                );
            };
            if get("mode") == Some("ingress") {
                // Swarm's routing mesh; the nearest here is a host port on each machine.
            }
            (
                get("host_ip").unwrap_or("").to_string(),
                published.to_string(),
                get("target").unwrap_or("").to_string(),
                get("protocol").unwrap_or("tcp").to_string(),
            )
        }
        _ => return Err(format!("expected a port, found {}", node.kind())),
    };
    if host.contains('-') || container.contains('-') {
        return Err(format!(
            "{host}:{container}: port ranges are not supported; list each port"
        ));
    }
    for p in [&host, &container] {
        if !matches!(p.parse::<u16>(), Ok(n) if n > 0) {
            return Err(format!("{p:?} is not a port number (1-65535)"));
        }
    }
    if proto != "tcp" && proto != "udp" {
        return Err(format!("{proto:?}: the protocol is tcp or udp"));
    }
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("{ip:?} is not an IP address"));
    }
    Ok(match (ip.is_empty(), proto.as_str()) {
        (true, "tcp") => format!("{host}:{container}"),
        (true, _) => format!("{host}:{container}/{proto}"),
        (false, "tcp") => format!("{ip}:{host}:{container}"),
        (false, _) => format!("{ip}:{host}:{container}/{proto}"),
    })
}

/// What a `volumes:` entry becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum VolumeEntry {
    /// `source:target[:ro]` for Docker: a named volume (under the project's name) or an
    /// absolute bind.
    Mount(String),
    /// A path relative to the Compose file: its files are uploaded (`files::upload_bind`).
    Upload {
        source: String,
        target: String,
        read_only: bool,
    },
}

/// A `volumes:` entry.
fn volume(
    node: &Node,
    project: &str,
    volumes: &BTreeMap<String, VolumeDef>,
) -> Result<VolumeEntry, String> {
    let (source, target, read_only) = match &node.value {
        Value::Scalar { text, .. } => {
            let parts: Vec<&str> = text.split(':').collect();
            match parts.as_slice() {
                [_] => return Err(format!("{text:?}: an anonymous volume is lost with its container: name it (data:{text})")),
                [s, t] => (s.to_string(), t.to_string(), false),
                [s, t, mode] => {
                    let modes: Vec<&str> = mode.split(',').collect();
                    if let Some(m) = modes.iter().find(|m| !matches!(**m, "ro" | "rw" | "z" | "Z")) {
                        return Err(format!("{text:?}: the mode {m:?} is not supported (ro or rw)"));
                    }
                    (s.to_string(), t.to_string(), modes.contains(&"ro"))
                }
                _ => return Err(format!("{text:?}: expected SOURCE:TARGET[:ro]")),
            }
        }
        Value::Map(fields) => {
            let get = |n: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k.text == n)
                    .and_then(|(_, v)| v.as_str())
            };
            match get("type") {
                Some("volume" | "bind") | None => {}
                Some(t) => {
                    return Err(format!(
                        "volumes of type {t:?} are not supported (volume or bind)"
                    ))
                }
            }
            let Some(source) = get("source") else {
                return Err(
                    "an anonymous volume is lost with its container: give it a `source:`".into(),
                );
            };
            let Some(target) = get("target") else {
                return Err("a volume needs `target:`".into());
            };
            (
                source.to_string(),
                target.to_string(),
                get("read_only").is_some_and(|t| matches!(t, "true" | "True" | "TRUE")),
            )
        }
        _ => return Err(format!("expected a volume, found {}", node.kind())),
    };
    if !target.starts_with('/') {
        return Err(format!(
            "{target:?}: the path in the container must be absolute"
        ));
    }
    let source = if source.starts_with('/') {
        source
    } else if source.starts_with('.') {
        return Ok(VolumeEntry::Upload {
            source,
            target,
            read_only,
        });
    } else if source.starts_with('~') {
        return Err(format!(
            "{source:?} is in a home folder of this computer: give it relative to the Compose \
             file (its files are then uploaded), or copy it to the machines and give the \
             absolute path there"
        ));
    } else {
        match volumes.get(&source) {
            None => {
                return Err(format!(
                    "the volume {source:?} is not declared under the top-level `volumes:`"
                ))
            }
            Some(VolumeDef {
                docker_name: Some(n),
            }) => n.clone(),
            Some(VolumeDef { docker_name: None }) => format!("{project}_{source}"),
        }
    };
    Ok(VolumeEntry::Mount(if read_only {
        format!("{source}:{target}:ro")
    } else {
        format!("{source}:{target}")
    }))
}

/// Splits a command line as a POSIX shell would, without expanding anything: Compose's
/// `command: a "b c"` is `["a", "b c"]`.
pub fn split_shell(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("{s:?}: a single quote is not closed")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(format!("{s:?}: a double quote is not closed")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("{s:?}: a double quote is not closed")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(shell: &[(&str, &str)], dotenv: &[(&str, &str)]) -> Variables {
        let map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Variables {
            shell: map(shell),
            dotenv: map(dotenv),
        }
    }

    fn load(text: &str, vars: &Variables) -> Result<Project, Vec<Diagnostic>> {
        parse(
            text,
            Path::new("/nowhere"),
            "folder",
            vars,
            &Options::default(),
        )
    }

    fn spec<'a>(p: &'a Project, name: &str) -> &'a ServiceSpec {
        &p.services.iter().find(|s| s.name == name).unwrap().spec
    }

    /// (line, key) of each error.
    fn errors(text: &str) -> Vec<(usize, String)> {
        load(text, &Variables::default())
            .unwrap_err()
            .into_iter()
            .map(|d| (d.line, d.key))
            .collect()
    }

    #[test]
    fn secrets_and_configs_are_read_here_and_mounted_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db_password.txt"), "hunter2\n").unwrap();
        let text = "\
services:
  db:
    image: db:1
    secrets:
      - db_password
      - source: api_key
        target: key
        uid: '999'
        mode: 0400
    configs:
      - app
      - source: inline
        target: /etc/inline.conf
secrets:
  db_password:
    file: ./db_password.txt
  api_key:
    environment: API_KEY
configs:
  app:
    file: db_password.txt
  inline:
    content: |
      port = ${PORT:-8080}
";
        let p = parse(
            text,
            dir.path(),
            "folder",
            &vars(&[("API_KEY", "k-123")], &[]),
            &Options::default(),
        )
        .unwrap();
        let files = &spec(&p, "db").files;
        let at: Vec<(&str, &str, u32, u32, bool)> = files
            .iter()
            .map(|f| (f.name.as_str(), f.target.as_str(), f.mode, f.uid, f.secret))
            .collect();
        assert_eq!(
            at,
            [
                ("db_password", "/run/secrets/db_password", 0, 0, true),
                ("api_key", "/run/secrets/key", 0o400, 999, true),
                ("app", "/app", 0, 0, false),
                ("inline", "/etc/inline.conf", 0, 0, false),
            ]
        );
        assert_eq!(files[1].digest, uncloud_common::files::digest(b"k-123"));
        assert_eq!(
            files[3].digest,
            uncloud_common::files::digest(b"port = 8080\n")
        );
        // One content for the secret and the config made of the same file.
        assert_eq!(files[0].digest, files[2].digest);
        assert_eq!(p.files.len(), 3);
        for f in &p.files {
            f.validate().unwrap();
        }
    }

    #[test]
    fn relative_binds_upload_their_files_read_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(conf.join("sub")).unwrap();
        std::fs::write(conf.join("b.conf"), "b").unwrap();
        std::fs::write(conf.join("sub/a.sh"), "echo a").unwrap();
        std::fs::set_permissions(
            conf.join("sub/a.sh"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::fs::write(dir.path().join("one.txt"), "1").unwrap();
        let text = "services:\n  app:\n    image: app:1\n    volumes:\n      - ./conf:/etc/app\n      - ./one.txt:/one.txt:ro\n";
        let p = parse(
            text,
            dir.path(),
            "f",
            &Variables::default(),
            &Options::default(),
        )
        .unwrap();
        let files: Vec<(&str, &str, u32)> = spec(&p, "app")
            .files
            .iter()
            .map(|f| (f.name.as_str(), f.target.as_str(), f.mode))
            .collect();
        assert_eq!(
            files,
            [
                ("conf/b.conf", "/etc/app/b.conf", 0o444),
                ("conf/sub/a.sh", "/etc/app/sub/a.sh", 0o555),
                ("one.txt", "/one.txt", 0o444),
            ]
        );
        assert!(spec(&p, "app").volumes.is_empty());
        assert_eq!(p.files.len(), 3);
        // Only the writable one is warned about.
        let warned: Vec<usize> = p.warnings.iter().map(|w| w.line).collect();
        assert_eq!(warned, [5]);
        let missing = "services:\n  app:\n    image: app:1\n    volumes:\n      - ./nope:/x\n      - ~/x:/y\n";
        let e = parse(
            missing,
            dir.path(),
            "f",
            &Variables::default(),
            &Options::default(),
        )
        .unwrap_err();
        assert_eq!(e.iter().map(|d| d.line).collect::<Vec<_>>(), [5, 6]);
    }

    #[test]
    fn secrets_that_cannot_be_honoured_are_errors_at_their_line() {
        let text = "\
services:
  db:
    image: db:1
    secrets:
      - nope
      - source: s
        mode: rw
secrets:
  s:
    external: true
  t:
    file: /does/not/exist
  u:
    content: x
";
        assert_eq!(
            errors(text),
            [
                (5, "services.db.secrets".to_string()),
                // `s` has no content (external is refused): using it is an error too.
                (6, "services.db.secrets".to_string()),
                (7, "services.db.secrets.mode".to_string()),
                (10, "secrets.s.external".to_string()),
                (12, "secrets.t.file".to_string()),
                (14, "secrets.u.content".to_string()),
            ]
        );
        let clash = "services:\n  db:\n    image: db:1\n    secrets:\n      - a\n      - source: b\n        target: a\nsecrets:\n  a:\n    environment: HOME\n  b:\n    environment: HOME\n";
        let e = load(clash, &vars(&[("HOME", "/root")], &[])).unwrap_err();
        assert!(
            e.iter()
                .any(|d| d.line == 2 && d.message.contains("two files mounted at one path")),
            "{e:?}"
        );
    }

    #[test]
    fn x_ports_in_host_mode_bind_on_the_machine_and_bad_ones_name_their_line() {
        let text = "services:\n  dns:\n    image: dns:1\n    x-ports:\n      - 53/udp@host\n      - dns.example.com:8080/https\n";
        let p = load(text, &Variables::default()).unwrap();
        assert_eq!(spec(&p, "dns").publish, ["53:53/udp"]);
        assert_eq!(spec(&p, "dns").ports, ["dns.example.com:8080/https"]);
        let bad = "services:\n  dns:\n    image: dns:1\n    x-ports:\n      - 53/http@host\n";
        assert_eq!(errors(bad), [(4, "services.dns.x-ports".to_string())]);
    }

    #[test]
    fn resource_limits_that_are_not_a_mapping_are_an_error_at_their_line() {
        let text = "services:\n  web:\n    image: web:1\n    deploy:\n      resources:\n        limits: 2\n";
        assert_eq!(
            errors(text),
            [(6, "services.web.deploy.resources.limits".to_string())]
        );
    }

    #[test]
    fn update_config_says_how_a_change_rolls_out() {
        let text = "services:\n  web:\n    image: web:1\n    deploy:\n      update_config:\n        order: stop-first\n        monitor: 2s\n        failure_action: pause\n        parallelism: 2\n";
        let p = load(text, &Variables::default()).unwrap();
        let web = &p.services[0];
        assert_eq!(
            web.update,
            UpdateConfig {
                order: "stop-first".into(),
                monitor_ms: 2000,
                no_rollback: true,
            }
        );
        assert!(p.warnings.iter().any(|w| w.key.ends_with("parallelism")));
        let bad = "services:\n  web:\n    image: web:1\n    deploy:\n      update_config:\n        order: blue-green\n        failure_action: continue\n";
        assert_eq!(
            errors(bad),
            [
                (6, "services.web.deploy.update_config.order".to_string()),
                (
                    7,
                    "services.web.deploy.update_config.failure_action".to_string()
                )
            ]
        );
    }

    #[test]
    fn keys_become_the_spec() {
        let text = "\
services:
  web:
    image: nginx:${TAG:-1.27}
    command: nginx -g 'daemon off;'
    environment:
      - MODE=prod
      - FROM_DOTENV
      - FROM_SHELL
    ports: ['8080:80', '127.0.0.1:5353:53/udp']
    volumes: [data:/srv, '/etc/ssl:/ssl:ro']
    restart: always
    deploy:
      replicas: 3
      resources: {limits: {cpus: '0.5', memory: 256M}}
      restart_policy: {condition: on-failure}
      placement: {constraints: [node.hostname == alpha, node.labels.disk == ssd, 'node.hostname != gamma', node.platform.arch == amd64]}
    x-machines: [beta]
    cap_add: [NET_ADMIN]
    cap_drop: [MKNOD]
    sysctls: {net.core.somaxconn: 1024}
    stop_signal: SIGQUIT
    stop_grace_period: 1m30s
  worker:
    image: x
    sysctls: [net.ipv4.tcp_syncookies=0]
volumes:
  data:
  shared: {external: True}
";
        let v = vars(&[("FROM_SHELL", "s")], &[("FROM_DOTENV", "d")]);
        let p = load(text, &v).unwrap();
        assert_eq!(p.name, "folder");
        let web = spec(&p, "web");
        assert_eq!(web.image, "nginx:1.27");
        assert_eq!(web.command, ["nginx", "-g", "daemon off;"]);
        assert_eq!(web.env["MODE"], "prod");
        assert_eq!(
            web.env["FROM_DOTENV"], "d",
            "a bare name is looked up in .env too"
        );
        assert_eq!(web.env["FROM_SHELL"], "s");
        assert_eq!(web.publish, ["8080:80", "127.0.0.1:5353:53/udp"]);
        assert_eq!(web.volumes, ["folder_data:/srv", "/etc/ssl:/ssl:ro"]);
        assert_eq!(web.replicas, 3);
        assert_eq!(web.cpu_millis, 500);
        assert_eq!(web.memory_bytes, 256 << 20);
        assert_eq!(
            web.restart, "on-failure",
            "deploy.restart_policy wins over restart"
        );
        assert_eq!(
            web.machines,
            ["alpha", "beta"],
            "constraints and x-machines add up"
        );
        assert_eq!(
            web.constraints,
            [
                "node.labels.disk==ssd",
                "node.hostname!=gamma",
                "node.platform.arch==x86_64"
            ]
        );
        assert_eq!(web.cap_add, ["NET_ADMIN"]);
        assert_eq!(web.cap_drop, ["MKNOD"]);
        assert_eq!(web.sysctls["net.core.somaxconn"], "1024");
        assert_eq!(web.stop_signal, "SIGQUIT");
        assert_eq!(web.stop_grace_ms, 90_000);
        assert_eq!(spec(&p, "worker").sysctls["net.ipv4.tcp_syncookies"], "0");
    }

    #[test]
    fn the_project_name_comes_from_p_then_the_environment_then_name_then_the_folder() {
        let text = "name: Shop_App\nservices:\n  a: {image: x}\n";
        assert_eq!(load(text, &Variables::default()).unwrap().name, "shop-app");
        let v = vars(&[], &[("COMPOSE_PROJECT_NAME", "staging")]);
        assert_eq!(load(text, &v).unwrap().name, "staging");
        let options = Options {
            project: Some("mine".into()),
            ..Default::default()
        };
        let p = parse(text, Path::new("/"), "folder", &v, &options).unwrap();
        assert_eq!(p.name, "mine");
        let p = load("services:\n  a: {image: x}\n", &Variables::default()).unwrap();
        assert_eq!(p.name, "folder");
    }

    #[test]
    fn services_start_after_their_dependencies_and_cycles_are_refused() {
        let text = "\
services:
  web: {image: x, depends_on: [api]}
  api: {image: x, depends_on: {db: {condition: service_healthy}}}
  db: {image: x}
";
        let p = load(text, &Variables::default()).unwrap();
        let order: Vec<&str> = p.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(order, ["db", "api", "web"]);
        let api = p.services.iter().find(|s| s.name == "api").unwrap();
        assert!(api.depends_on[0].healthy);
        let cycle =
            "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}\n";
        let e = load(cycle, &Variables::default()).unwrap_err();
        assert!(e.iter().any(|d| d.message.contains("cycle")), "{e:?}");
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error_at_its_line() {
        let text = "\
services:
  a:
    image: x
    build: .
    replicas_typo: 1
    deploy: {replicas: 0}
  b:
    image: x
    entrypoint: []
    command: ''
    ports: ['80-90:80']
  c:
    command: run
  d:
    image: x
    sysctls: [net.core.somaxconn]
    stop_grace_period: soon
    privileged: true
";
        assert_eq!(
            errors(text),
            [
                (4, "services.a.build".to_string()),
                (5, "services.a.replicas_typo".to_string()),
                (6, "services.a.deploy.replicas".to_string()),
                (9, "services.b.entrypoint".to_string()),
                (10, "services.b.command".to_string()),
                (11, "services.b.ports".to_string()),
                (12, "services.c".to_string()),
                (16, "services.d.sysctls".to_string()),
                (17, "services.d.stop_grace_period".to_string()),
                (18, "services.d.privileged".to_string()),
            ]
        );
        let e = errors("services:\n  a:\n    image: ${IMAGE:?set IMAGE}\n");
        assert_eq!(e, [(3, "services.a.image".to_string())]);
    }

    #[test]
    fn unset_variables_are_blank_with_a_warning() {
        let p = load(
            "services:\n  a:\n    image: x\n    environment: {A: '${NOPE}'}\n",
            &Variables::default(),
        )
        .unwrap();
        assert_eq!(spec(&p, "a").env["A"], "");
        assert!(
            p.warnings.iter().any(|w| w.message.contains("NOPE")),
            "{:?}",
            p.warnings
        );
    }
}
