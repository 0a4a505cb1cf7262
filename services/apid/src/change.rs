//! What `uc machine rename|label|role` changes on a machine's entry: pure, so every refusal
//! is tested without a daemon.

use std::collections::BTreeMap;

use uncloud_api::wire::MachineChange;
use uncloud_common::model::{validate_dns_label, Machine, ROLES};

/// The fields to write; `None`: leave the field as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub machine_id: String,
    pub name: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub roles: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChangeError {
    #[error("{0}")]
    Name(String),
    #[error("unknown role {0:?}: a machine's roles are {roles}", roles = ROLES.join(", "))]
    UnknownRole(String),
    #[error(
        "label key {0:?} is not usable: 1 to 63 letters, digits, `-`, `_`, `.` or `/`, \
         starting with a letter or digit"
    )]
    LabelKey(String),
    #[error("label value for {0:?} is longer than 255 bytes or has control characters")]
    LabelValue(String),
    #[error("nothing to change: give a new name, labels or roles")]
    Nothing,
}

/// Checks `req` against `m` and returns the writes that bring `m` to what was asked.
pub fn plan(m: &Machine, req: &MachineChange) -> Result<Plan, ChangeError> {
    let asked_nothing = req.rename.is_empty()
        && req.set_labels.is_empty()
        && req.remove_labels.is_empty()
        && req.add_roles.is_empty()
        && req.remove_roles.is_empty();
    if asked_nothing {
        return Err(ChangeError::Nothing);
    }
    let name = match req.rename.as_str() {
        "" => None,
        n => {
            validate_dns_label("machine name", n).map_err(|e| ChangeError::Name(e.to_string()))?;
            (n != m.name).then(|| n.to_string())
        }
    };

    let mut labels = m.labels.clone();
    for (k, v) in &req.set_labels {
        check_label_key(k)?;
        if v.len() > 255 || v.chars().any(char::is_control) {
            return Err(ChangeError::LabelValue(k.clone()));
        }
        labels.insert(k.clone(), v.clone());
    }
    for k in &req.remove_labels {
        labels.remove(k);
    }

    let mut roles = m.roles.clone();
    for r in req.add_roles.iter().chain(&req.remove_roles) {
        if !ROLES.contains(&r.as_str()) {
            return Err(ChangeError::UnknownRole(r.clone()));
        }
    }
    for r in &req.add_roles {
        if !roles.contains(r) {
            roles.push(r.clone());
        }
    }
    roles.retain(|r| !req.remove_roles.contains(r));
    roles.sort();

    let mut before = m.roles.clone();
    before.sort();
    Ok(Plan {
        machine_id: m.id.clone(),
        name,
        labels: (labels != m.labels).then_some(labels),
        roles: (roles != before).then_some(roles),
    })
}

fn check_label_key(k: &str) -> Result<(), ChangeError> {
    let ok = !k.is_empty()
        && k.len() <= 63
        && k.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ChangeError::LabelKey(k.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            id: "m1".into(),
            name: "alpha".into(),
            subnet: 1,
            labels: [("disk".to_string(), "hdd".to_string())].into(),
            roles: vec![],
            ..Default::default()
        }
    }

    fn change() -> MachineChange {
        MachineChange {
            machine: "alpha".into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_fields_that_change_are_written() {
        let mut req = change();
        req.set_labels.insert("disk".into(), "ssd".into());
        req.set_labels.insert("zone".into(), "eu".into());
        req.add_roles.push("ingress".into());
        let p = plan(&machine(), &req).unwrap();
        assert_eq!(p.name, None);
        assert_eq!(
            p.labels.unwrap(),
            BTreeMap::from([("disk".into(), "ssd".into()), ("zone".into(), "eu".into())])
        );
        assert_eq!(p.roles.unwrap(), vec!["ingress".to_string()]);

        // Asking for what is there already writes nothing.
        let mut req = change();
        req.rename = "alpha".into();
        req.set_labels.insert("disk".into(), "hdd".into());
        req.remove_roles.push("ingress".into());
        let p = plan(&machine(), &req).unwrap();
        assert_eq!((p.name, p.labels, p.roles), (None, None, None));
    }

    #[test]
    fn removing_a_label_and_a_role() {
        let mut m = machine();
        m.roles = vec!["ingress".into()];
        let mut req = change();
        req.remove_labels.push("disk".into());
        req.remove_labels.push("never-there".into());
        req.remove_roles.push("ingress".into());
        let p = plan(&m, &req).unwrap();
        assert_eq!(p.labels, Some(BTreeMap::new()));
        assert_eq!(p.roles, Some(vec![]));
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let mut req = change();
        req.rename = "Not A Label".into();
        assert!(matches!(plan(&machine(), &req), Err(ChangeError::Name(_))));

        let mut req = change();
        req.add_roles.push("database".into());
        let e = plan(&machine(), &req).unwrap_err();
        assert_eq!(e, ChangeError::UnknownRole("database".into()));
        assert!(e.to_string().contains("ingress"), "{e}");

        for key in ["", "-x", "a=b", "sp ace", &"k".repeat(64)] {
            let mut req = change();
            req.set_labels.insert(key.into(), "v".into());
            assert_eq!(
                plan(&machine(), &req),
                Err(ChangeError::LabelKey(key.into())),
                "{key:?}"
            );
        }
        let mut req = change();
        req.set_labels.insert("k".into(), "line\nbreak".into());
        assert_eq!(
            plan(&machine(), &req),
            Err(ChangeError::LabelValue("k".into()))
        );

        assert_eq!(plan(&machine(), &change()), Err(ChangeError::Nothing));
    }
}
