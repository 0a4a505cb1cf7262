//! Commands about one machine's view (`machine ls|status|logs|reboot`, `mesh peers`): asked
//! of the connected machine, or with `-m` of each target through it.

use anyhow::bail;
use uncloud_api::wire::{Answer, Call, FanOut, TargetReply};

use crate::context::Store;
use crate::remote::{self, answer, RemoteError};
use crate::Global;

/// `call` on the connected machine, or on each machine `-m` names. One reply per machine;
/// an unreachable target is a reply with an error, not a failure of the whole command.
pub async fn ask(g: &Global, call: Call, min_api: u32) -> anyhow::Result<Vec<TargetReply>> {
    let store = Store::default_location();
    let ctx = store.load(g.context.as_deref())?;
    let (member, via) = remote::member(&ctx, g).await?;
    remote::require_api(&member, &via, min_api).await?;
    if g.targets.is_empty() {
        let (answer, error) = match answer(member.call(remote::ctx(), call).await) {
            Ok(a) => (Some(a), None),
            Err(RemoteError::Api(e)) => (None, Some(e)),
            Err(e) => return Err(e.into()),
        };
        return Ok(vec![TargetReply {
            machine: via,
            machine_id: String::new(),
            answer,
            error,
        }]);
    }
    Ok(answer(
        member
            .fan_out(
                remote::ctx(),
                FanOut {
                    targets: g.targets.clone(),
                    call,
                },
            )
            .await,
    )?)
}

/// Prints each answer with `print` (which gets the machine's name and whether several
/// machines answer), each error to stderr, and fails if any target did.
pub fn each(
    replies: &[TargetReply],
    mut print: impl FnMut(&str, &Answer, bool) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let several = replies.len() > 1;
    let mut failed = 0;
    for r in replies {
        match (&r.answer, &r.error) {
            (Some(a), _) => print(&r.machine, a, several)?,
            (_, Some(e)) => {
                failed += 1;
                eprintln!("error: {}: {e}", r.machine);
            }
            _ => {
                failed += 1;
                eprintln!("error: {}: an empty answer", r.machine);
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} machine(s) did not answer", replies.len());
    }
    Ok(())
}

/// An answer of another kind than the call's: a newer or confused machine.
pub fn unexpected(machine: &str) -> anyhow::Error {
    anyhow::anyhow!("{machine} gave an answer of another kind than asked (a newer uc may read it)")
}
