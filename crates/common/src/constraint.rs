//! Placement constraints on machines, as Compose writes them in
//! `deploy.placement.constraints`: `node.labels.KEY == VALUE`, `node.labels.KEY != VALUE`,
//! `node.hostname == NAME`, `node.hostname != NAME`, `node.platform.arch == ARCH` and `!=`.
//! A service's containers go only to machines that match all of its constraints. Pure:
//! parsed from text, matched against a machine's name, architecture (as its record says,
//! `uname -m`) and labels (`uc machine label`).

use std::collections::BTreeMap;
use std::fmt;

use crate::model::Machine;

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// `node.labels.KEY`.
    Label(String),
    /// `node.hostname`: the machine's name.
    Hostname,
    /// `node.platform.arch`: the machine's CPU architecture as `uname -m` names it
    /// (`x86_64`, `aarch64`), as Docker Swarm matches it. An image built for one architecture
    /// runs only there: in a network of both, this keeps a service where its image runs.
    Arch,
}

/// What a constraint is matched against: one machine.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub name: &'a str,
    /// `uname -m`; empty if the record does not say.
    pub arch: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a Machine> for Facts<'a> {
    fn from(m: &'a Machine) -> Facts<'a> {
        Facts {
            name: &m.name,
            arch: &m.arch,
            labels: &m.labels,
        }
    }
}

/// `uname -m`'s name for an architecture also called by Docker's and Debian's name
/// (`amd64`, `arm64`), so that either spelling matches.
fn canonical_arch(arch: &str) -> &str {
    match arch {
        "amd64" | "x86-64" => "x86_64",
        "arm64" => "aarch64",
        other => other,
    }
}

/// One constraint: a subject, `==` or `!=`, a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub subject: Subject,
    pub equal: bool,
    pub value: String,
}

impl Constraint {
    /// Parses `node.labels.disk == ssd` (spaces around the operator optional).
    pub fn parse(text: &str) -> Result<Constraint, String> {
        let (left, equal, right) = if let Some((l, r)) = text.split_once("==") {
            (l, true, r)
        } else if let Some((l, r)) = text.split_once("!=") {
            (l, false, r)
        } else {
            return Err(format!(
                "{text:?}: expected `node.labels.KEY == VALUE`, `node.hostname == NAME`, \
                 `node.platform.arch == ARCH` or the same with !="
            ));
        };
        let (left, value) = (left.trim(), right.trim());
        if value.is_empty() || value.contains("==") || value.contains("!=") {
            return Err(format!("{text:?}: expected one value after the operator"));
        }
        let mut value = value.to_string();
        let subject = if left == "node.hostname" {
            Subject::Hostname
        } else if left == "node.platform.arch" {
            value = canonical_arch(&value).to_string();
            Subject::Arch
        } else if let Some(key) = left.strip_prefix("node.labels.") {
            if key.is_empty() || key.chars().any(char::is_whitespace) {
                return Err(format!("{text:?}: expected a label key after node.labels."));
            }
            Subject::Label(key.to_string())
        } else {
            return Err(format!(
                "{text:?}: only node.labels.KEY, node.hostname and node.platform.arch can be \
                 matched (machines have names, architectures and labels: `uc machine ls`, \
                 `uc machine label`)"
            ));
        };
        Ok(Constraint {
            subject,
            equal,
            value,
        })
    }

    /// Whether the machine satisfies it. A missing label, or an architecture its record does
    /// not say, is unequal to every value.
    pub fn matches(&self, machine: &Facts) -> bool {
        let have = match &self.subject {
            Subject::Hostname => Some(machine.name),
            Subject::Arch => Some(canonical_arch(machine.arch)).filter(|a| !a.is_empty()),
            Subject::Label(key) => machine.labels.get(key).map(String::as_str),
        };
        (have == Some(self.value.as_str())) == self.equal
    }
}

/// The canonical text (`node.labels.disk==ssd`), as specs store it.
impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Subject::Hostname => write!(f, "node.hostname")?,
            Subject::Arch => write!(f, "node.platform.arch")?,
            Subject::Label(key) => write!(f, "node.labels.{key}")?,
        }
        write!(f, "{}{}", if self.equal { "==" } else { "!=" }, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn machine<'a>(name: &'a str, labels: &'a BTreeMap<String, String>) -> Facts<'a> {
        Facts {
            name,
            arch: "x86_64",
            labels,
        }
    }

    #[test]
    fn labels_and_hostnames_match_with_either_operator() {
        let ssd = Constraint::parse("node.labels.disk == ssd").unwrap();
        assert_eq!(ssd.to_string(), "node.labels.disk==ssd");
        assert!(ssd.matches(&machine("a", &labels(&[("disk", "ssd")]))));
        assert!(!ssd.matches(&machine("a", &labels(&[("disk", "hdd")]))));
        assert!(!ssd.matches(&machine("a", &labels(&[]))));
        let not_ssd = Constraint::parse("node.labels.disk!=ssd").unwrap();
        assert!(not_ssd.matches(&machine("a", &labels(&[]))));
        assert!(!not_ssd.matches(&machine("a", &labels(&[("disk", "ssd")]))));
        let not_alpha = Constraint::parse(" node.hostname != alpha ").unwrap();
        assert!(!not_alpha.matches(&machine("alpha", &labels(&[]))));
        assert!(not_alpha.matches(&machine("beta", &labels(&[]))));
        assert_eq!(
            Constraint::parse(&not_alpha.to_string()).unwrap(),
            not_alpha
        );
    }

    #[test]
    fn architectures_match_by_either_name() {
        let none = labels(&[]);
        let pi = Facts {
            name: "pi",
            arch: "aarch64",
            labels: &none,
        };
        let vps = machine("vps", &none);
        let amd64 = Constraint::parse("node.platform.arch == amd64").unwrap();
        assert_eq!(amd64.to_string(), "node.platform.arch==x86_64");
        assert!(amd64.matches(&vps) && !amd64.matches(&pi));
        let not_arm = Constraint::parse("node.platform.arch!=aarch64").unwrap();
        assert!(not_arm.matches(&vps) && !not_arm.matches(&pi));
        assert_eq!(
            Constraint::parse("node.platform.arch != arm64").unwrap(),
            not_arm
        );
        // A record that does not say (written before the field): unequal to every value.
        let unknown = Facts { arch: "", ..vps };
        assert!(!amd64.matches(&unknown) && not_arm.matches(&unknown));
    }

    #[test]
    fn anything_else_is_refused_with_what_is_understood() {
        for bad in [
            "node.role == manager",
            "node.labels.disk",
            "node.labels. == x",
            "node.labels.disk ==",
            "node.labels.a == b == c",
            "engine.labels.x == y",
            "node.platform.os == linux",
        ] {
            let err = Constraint::parse(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
