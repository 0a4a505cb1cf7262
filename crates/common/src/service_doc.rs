//! How a [`Service`] is stored in the automerge document.
//!
//! autosurgeon's derive stores every struct field under its own key, so two machines that
//! deploy different specs of one service concurrently would merge field by field: the image of
//! one and the replicas of the other, a spec nobody wrote. Here the revision and the spec are
//! one JSON string under `current`, a single register: concurrent writes resolve to exactly
//! one of them, the same on every machine (automerge's order of operations). The writes that
//! lost are still in the document as conflicting values of `current`; stated moves them into
//! `history` after the merge (`loser_revisions`). `history` is a map keyed by revision and a
//! hash of the spec, so the same earlier revision recorded by two machines is one entry.
//!
//! Layout: `{id, name, project, created_at_ms, vip, current: "<json>", history: {key: "<json>"}}`.
//! An entry in the older layout (`revision`, `spec` as a map, `history` as a list) still reads.

use std::collections::BTreeMap;

use autosurgeon::hydrate::MaybeMissing;
use autosurgeon::{Hydrate, HydrateError, Reconcile, Reconciler};

use crate::model::{Service, ServiceRevision, ServiceSpec};

#[derive(serde::Serialize, serde::Deserialize)]
struct Current<'a> {
    revision: u64,
    spec: std::borrow::Cow<'a, ServiceSpec>,
}

/// The `current` register's value for `revision` and `spec`.
pub fn current_json(revision: u64, spec: &ServiceSpec) -> String {
    serde_json::to_string(&Current {
        revision,
        spec: std::borrow::Cow::Borrowed(spec),
    })
    .expect("specs serialize")
}

/// Parses a `current` (or history) value.
pub fn parse_current(json: &str) -> Result<ServiceRevision, serde_json::Error> {
    let c: Current<'static> = serde_json::from_str(json)?;
    Ok(ServiceRevision {
        revision: c.revision,
        spec: c.spec.into_owned(),
    })
}

/// The key of an earlier revision in `history`: ordered by revision, then by spec.
pub fn history_key(revision: &ServiceRevision) -> String {
    // FNV-1a: stable across releases and machines (std's hasher is not).
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in current_json(revision.revision, &revision.spec).bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    format!("{:020}-{hash:016x}", revision.revision)
}

impl Reconcile for Service {
    type Key<'a> = autosurgeon::reconcile::NoKey;

    fn reconcile<R: Reconciler>(&self, mut reconciler: R) -> Result<(), R::Error> {
        use autosurgeon::reconcile::MapReconciler;
        let mut m = reconciler.map()?;
        m.put("id", &self.id)?;
        m.put("name", &self.name)?;
        m.put("project", &self.project)?;
        m.put("created_at_ms", self.created_at_ms)?;
        if self.vip != 0 {
            m.put("vip", u64::from(self.vip))?;
        }
        m.put("current", current_json(self.revision, &self.spec))?;
        let history: BTreeMap<String, String> = self
            .history
            .iter()
            .map(|r| (history_key(r), current_json(r.revision, &r.spec)))
            .collect();
        m.put("history", history)?;
        // The older layout's keys, if this entry had them: now in `current`.
        for old in ["revision", "spec"] {
            if m.entry(old).is_some() {
                m.delete(old)?;
            }
        }
        Ok(())
    }
}

impl Hydrate for Service {
    fn hydrate_map<D: autosurgeon::ReadDoc>(
        doc: &D,
        obj: &automerge::ObjId,
    ) -> Result<Self, HydrateError> {
        let text = |key: &str| -> Result<String, HydrateError> {
            Ok(
                autosurgeon::hydrate_prop::<_, Option<String>, _, _>(doc, obj, key)?
                    .unwrap_or_default(),
            )
        };
        let bad = |what: &str, e: serde_json::Error| {
            HydrateError::unexpected(format!("a service's {what} as JSON"), e.to_string())
        };
        let current: Option<String> = autosurgeon::hydrate_prop(doc, obj, "current")?;
        let (revision, spec, history) = match current {
            Some(json) => {
                let c = parse_current(&json).map_err(|e| bad("current spec", e))?;
                let stored: Option<BTreeMap<String, String>> =
                    autosurgeon::hydrate_prop(doc, obj, "history")?;
                let mut history = Vec::new();
                // Sorted by key: by revision, oldest first.
                for json in stored.unwrap_or_default().values() {
                    history.push(parse_current(json).map_err(|e| bad("history", e))?);
                }
                (c.revision, c.spec, history)
            }
            None => {
                // The layout before `current` existed.
                let revision: Option<u64> = autosurgeon::hydrate_prop(doc, obj, "revision")?;
                let spec: ServiceSpec = autosurgeon::hydrate_prop(doc, obj, "spec")?;
                let history: Option<Vec<ServiceRevision>> =
                    autosurgeon::hydrate_prop(doc, obj, "history")?;
                (
                    revision.unwrap_or_default(),
                    spec,
                    history.unwrap_or_default(),
                )
            }
        };
        Ok(Service {
            id: text("id")?,
            name: text("name")?,
            project: text("project")?,
            created_at_ms: autosurgeon::hydrate_prop::<_, Option<u64>, _, _>(
                doc,
                obj,
                "created_at_ms",
            )?
            .unwrap_or_default(),
            // Written by stated; a peer-written value past u32 counts as no claim.
            // Missing (no claim, or written before virtual addresses) is 0.
            vip: match autosurgeon::hydrate_prop::<_, MaybeMissing<u64>, _, _>(doc, obj, "vip")? {
                MaybeMissing::Present(v) => u32::try_from(v).unwrap_or_default(),
                MaybeMissing::Missing => 0,
            },
            revision,
            spec,
            history,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::{AutoCommit, ROOT};
    use autosurgeon::{hydrate_prop, reconcile_prop};

    fn spec(image: &str, replicas: u32) -> ServiceSpec {
        ServiceSpec {
            image: image.into(),
            replicas,
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_and_history_is_keyed() {
        let mut s = Service {
            id: "web".into(),
            name: "web".into(),
            created_at_ms: 7,
            spec: spec("nginx:1", 2),
            ..Default::default()
        };
        s.update_spec(spec("nginx:2", 2));
        s.update_spec(spec("nginx:3", 4));
        let mut doc = AutoCommit::new();
        reconcile_prop(&mut doc, ROOT, "web", &s).unwrap();
        let back: Service = hydrate_prop(&doc, ROOT, "web").unwrap();
        assert_eq!(back, s);
        assert_eq!(back.history.len(), 2);
        assert!(history_key(&back.history[0]) < history_key(&back.history[1]));
    }

    #[test]
    fn a_service_without_a_virtual_address_reads_back() {
        // Past the last address, or written by a machine from before they existed.
        for vip in [0, 254] {
            let s = Service {
                id: "web".into(),
                name: "web".into(),
                vip,
                spec: spec("nginx:1", 1),
                ..Default::default()
            };
            let mut doc = automerge::Automerge::new();
            let mut tx = doc.transaction();
            reconcile_prop(&mut tx, ROOT, "web", &s).unwrap();
            tx.commit();
            let back: Service = hydrate_prop(&doc, ROOT, "web").unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn concurrent_specs_resolve_to_one_whole_spec() {
        let base = Service {
            id: "web".into(),
            name: "web".into(),
            spec: spec("nginx:1", 1),
            ..Default::default()
        };
        let mut a = AutoCommit::new();
        reconcile_prop(&mut a, ROOT, "web", &base).unwrap();
        let mut b = a.fork();
        // One side changes the image, the other the replicas.
        let mut on_a = base.clone();
        on_a.update_spec(spec("nginx:2", 1));
        reconcile_prop(&mut a, ROOT, "web", &on_a).unwrap();
        let mut on_b = base.clone();
        on_b.update_spec(spec("nginx:1", 5));
        reconcile_prop(&mut b, ROOT, "web", &on_b).unwrap();
        a.merge(&mut b).unwrap();
        b.merge(&mut a).unwrap();
        let on_a: Service = hydrate_prop(&a, ROOT, "web").unwrap();
        let on_b: Service = hydrate_prop(&b, ROOT, "web").unwrap();
        assert_eq!(on_a, on_b, "the same winner on both sides");
        assert!(
            on_a.spec == spec("nginx:2", 1) || on_a.spec == spec("nginx:1", 5),
            "one whole spec, never a mix: {:?}",
            on_a.spec
        );
    }
}
