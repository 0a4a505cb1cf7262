//! How one machine sees the others.

use serde::{Deserialize, Serialize};

/// A machine's view of another machine, from the gossip failure detector.
///
/// DNS and ingress answer only with containers of machines that are `Alive` (or `Suspect`,
/// which is still reachable as far as anyone knows) in the asker's partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Heartbeats arrive as expected.
    Alive,
    /// Heartbeats are late; the failure detector has not given up yet.
    Suspect,
    /// The failure detector declared it dead, or it was never heard from.
    Down,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Suspect => "suspect",
            Liveness::Down => "down",
        }
    }

    /// A liveness as stated's `Liveness` and `LivenessChanged` name it; anything unknown
    /// counts as down.
    pub fn from_state(s: &str) -> Liveness {
        match s {
            "alive" => Liveness::Alive,
            "suspect" => Liveness::Suspect,
            _ => Liveness::Down,
        }
    }

    /// Whether traffic should still be sent there.
    pub fn is_reachable(self) -> bool {
        !matches!(self, Liveness::Down)
    }
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stated_names_parse_and_anything_else_counts_as_down() {
        assert_eq!(Liveness::from_state("alive"), Liveness::Alive);
        assert_eq!(Liveness::from_state("suspect"), Liveness::Suspect);
        assert_eq!(Liveness::from_state("down"), Liveness::Down);
        assert_eq!(Liveness::from_state("Alive"), Liveness::Down);
        assert_eq!(Liveness::from_state(""), Liveness::Down);
        assert!(Liveness::from_state("suspect").is_reachable());
        assert!(!Liveness::from_state("gone").is_reachable());
    }
}
