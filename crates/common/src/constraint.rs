//! Placement constraints on machines, as Compose writes them in
//! `deploy.placement.constraints`: `node.labels.KEY == VALUE`, `node.labels.KEY != VALUE`,
//! `node.hostname == NAME`, `node.hostname != NAME`. A service's containers go only to
//! machines that match all of its constraints. Pure: parsed from text, matched against a
//! machine's name and labels (`uc machine label`).

use std::collections::BTreeMap;
use std::fmt;

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// `node.labels.KEY`.
    Label(String),
    /// `node.hostname`: the machine's name.
    Hostname,
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
                "{text:?}: expected `node.labels.KEY == VALUE`, `node.hostname == NAME` or the \
                 same with !="
            ));
        };
        let (left, value) = (left.trim(), right.trim());
        if value.is_empty() || value.contains("==") || value.contains("!=") {
            return Err(format!("{text:?}: expected one value after the operator"));
        }
        let subject = if left == "node.hostname" {
            Subject::Hostname
        } else if let Some(key) = left.strip_prefix("node.labels.") {
            if key.is_empty() || key.chars().any(char::is_whitespace) {
                return Err(format!("{text:?}: expected a label key after node.labels."));
            }
            Subject::Label(key.to_string())
        } else {
            return Err(format!(
                "{text:?}: only node.labels.KEY and node.hostname can be matched (machines \
                 have names and labels: `uc machine label`)"
            ));
        };
        Ok(Constraint {
            subject,
            equal,
            value: value.to_string(),
        })
    }

    /// Whether a machine with this name and these labels satisfies it. A missing label is
    /// unequal to every value.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        let have = match &self.subject {
            Subject::Hostname => Some(name),
            Subject::Label(key) => labels.get(key).map(String::as_str),
        };
        (have == Some(self.value.as_str())) == self.equal
    }
}

/// The canonical text (`node.labels.disk==ssd`), as specs store it.
impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Subject::Hostname => write!(f, "node.hostname")?,
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

    #[test]
    fn labels_and_hostnames_match_with_either_operator() {
        let ssd = Constraint::parse("node.labels.disk == ssd").unwrap();
        assert_eq!(ssd.to_string(), "node.labels.disk==ssd");
        assert!(ssd.matches("a", &labels(&[("disk", "ssd")])));
        assert!(!ssd.matches("a", &labels(&[("disk", "hdd")])));
        assert!(!ssd.matches("a", &labels(&[])));
        let not_ssd = Constraint::parse("node.labels.disk!=ssd").unwrap();
        assert!(not_ssd.matches("a", &labels(&[])));
        assert!(!not_ssd.matches("a", &labels(&[("disk", "ssd")])));
        let not_alpha = Constraint::parse(" node.hostname != alpha ").unwrap();
        assert!(!not_alpha.matches("alpha", &labels(&[])));
        assert!(not_alpha.matches("beta", &labels(&[])));
        assert_eq!(
            Constraint::parse(&not_alpha.to_string()).unwrap(),
            not_alpha
        );
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
        ] {
            let err = Constraint::parse(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
