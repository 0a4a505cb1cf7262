//! Files services mount (Compose `secrets` and `configs`): `uc deploy` stores their contents
//! with [`put_files`](Apid::put_files) before it deploys the specs that name them by digest;
//! [`require_files`](Apid::require_files) refuses a spec whose contents are not in the state
//! (the shim on the target machine reads them from its own state); the reconciler removes
//! contents it has seen no spec name for an hour ([`uncloud_common::files::Forgetting`]).
//!
//! Contents are secrets: they are never logged, and no answer of the API carries one.

use std::collections::BTreeMap;

use uncloud_api::wire::{ApiError, ErrorKind, PutFiles, PutFilesReply};
use uncloud_common::files::Forgetting;
use uncloud_common::model::{ServiceSpec, StoredFile};
use uncloud_pki::Role;

use crate::api::{internal, state_error, Apid, Caller};

/// Most contents one `put_files` call may carry (a project's secrets and configs).
const MAX_FILES_PER_CALL: usize = 64;

impl Apid {
    /// `uc deploy`: stores the contents the state lacks.
    pub async fn put_files(
        &self,
        caller: &Caller,
        req: PutFiles,
    ) -> Result<PutFilesReply, ApiError> {
        self.require(caller, Role::Admin)?;
        if req.files.len() > MAX_FILES_PER_CALL {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                format!(
                    "{} files in one call; at most {MAX_FILES_PER_CALL}",
                    req.files.len()
                ),
            ));
        }
        for f in &req.files {
            f.validate().map_err(|e| {
                ApiError::new(ErrorKind::Invalid, format!("file {}: {e}", f.digest))
            })?;
        }
        let digests: Vec<&str> = req.files.iter().map(|f| f.digest.as_str()).collect();
        let there = self.stored_files(&digests).await?;
        let mut reply = PutFilesReply::default();
        for f in &req.files {
            // One already there is kept, unless it is damaged (then stated rewrites it).
            if there.get(&f.digest).is_some_and(|t| t.validate().is_ok()) {
                reply.present += 1;
                continue;
            }
            self.state()
                .upsert_file(&serde_json::to_string(f).expect("files serialize"))
                .await
                .map_err(state_error)?;
            reply.stored += 1;
        }
        if reply.stored > 0 {
            tracing::info!(
                stored = reply.stored,
                present = reply.present,
                "file contents stored"
            );
        }
        Ok(reply)
    }

    /// Refuses a spec that names a content the state does not hold.
    pub(crate) async fn require_files(&self, spec: &ServiceSpec) -> Result<(), ApiError> {
        if spec.files.is_empty() {
            return Ok(());
        }
        let digests: Vec<&str> = spec.files.iter().map(|f| f.digest.as_str()).collect();
        let there = self.stored_files(&digests).await?;
        match spec.files.iter().find(|f| !there.contains_key(&f.digest)) {
            None => Ok(()),
            Some(missing) => Err(ApiError::new(
                ErrorKind::Invalid,
                format!(
                    "the content of {} ({}) is not in this machine's state: `uc deploy` stores \
                     it with the spec (an older uc does not)",
                    missing.name, missing.digest
                ),
            )),
        }
    }

    /// Removes the contents this machine has seen no spec or history name for
    /// [`uncloud_common::files::UNREFERENCED_GRACE`]. Every machine's reconciler does; a
    /// removal is the same wherever it is made.
    pub(crate) async fn forget_unreferenced_files(
        &self,
        forgetting: &mut Forgetting,
    ) -> Result<(), ApiError> {
        let state = uncloud_common::model::NetworkState {
            services: self.read_services().await?,
            files: self.read_all("files").await?,
            ..Default::default()
        };
        let unreferenced = uncloud_common::files::unreferenced(&state);
        let due = forgetting.due(
            &unreferenced,
            std::time::Instant::now(),
            uncloud_common::files::UNREFERENCED_GRACE,
        );
        for digest in due {
            self.state()
                .remove_file(&digest)
                .await
                .map_err(state_error)?;
            tracing::info!(%digest, "removed a file content no service names any more");
        }
        Ok(())
    }

    async fn stored_files(
        &self,
        digests: &[&str],
    ) -> Result<BTreeMap<String, StoredFile>, ApiError> {
        let json = self
            .state()
            .get_many("files", digests)
            .await
            .map_err(|e| internal("stated", e))?;
        serde_json::from_str(&json).map_err(|e| internal("stated's answer", e))
    }
}
