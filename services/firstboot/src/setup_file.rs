//! `uncloud-setup.toml`, the file on a Raspberry Pi's boot partition where the user puts the
//! hostname, a setup token or a join ticket before the first boot (the card is written on
//! another computer, which can only edit the FAT partition).

use serde::Deserialize;

use crate::token::{self, SecretError};

/// Where the Pi's boot partition is mounted (Debian's raspi-firmware convention).
pub const BOOT_MOUNT: &str = "/boot/firmware";
/// The setup file on it.
pub const PATH: &str = "/boot/firmware/uncloud-setup.toml";

/// What the file may say. Every key is optional; unknown keys are an error, so a typo is
/// reported instead of silently ignored.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SetupFile {
    pub hostname: Option<String>,
    pub setup_token: Option<String>,
    pub join_ticket: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupFileError {
    /// Where and what, never the offending line itself: it may hold the token.
    #[error("it is not valid TOML: line {line}, column {column}: {message}")]
    Toml {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("hostname {0:?}: {1}")]
    Hostname(String, &'static str),
    #[error("{0}")]
    Secret(#[from] SecretError),
}

impl SetupFile {
    /// Parses and checks the file: a bad hostname, token or ticket is an error naming it.
    pub fn parse(text: &str) -> Result<SetupFile, SetupFileError> {
        let mut file: SetupFile = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        if let Some(h) = &file.hostname {
            check_hostname(h).map_err(|why| SetupFileError::Hostname(h.clone(), why))?;
        }
        file.setup_token = file
            .setup_token
            .as_deref()
            .map(token::check_token)
            .transpose()?;
        file.join_ticket = file
            .join_ticket
            .as_deref()
            .map(token::check_ticket)
            .transpose()?;
        Ok(file)
    }

    pub fn has_secrets(&self) -> bool {
        self.setup_token.is_some() || self.join_ticket.is_some()
    }
}

fn toml_error(text: &str, e: &toml::de::Error) -> SetupFileError {
    let at = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
    let before = &text.as_bytes()[..at];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = at
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    SetupFileError::Toml {
        line,
        column,
        message: e.message().trim().to_owned(),
    }
}

/// A hostname the machine can take: dot-separated labels of letters, digits and `-`, none
/// starting or ending with `-`, each at most 63 characters, 64 in all (the kernel's limit).
pub fn check_hostname(h: &str) -> Result<(), &'static str> {
    if h.is_empty() || h.len() > 64 {
        return Err("a hostname has 1 to 64 characters");
    }
    for label in h.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated part has 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a part may not start or end with '-'");
        }
    }
    Ok(())
}

/// The file with its secrets taken out, for writing back once they are on the machine's own
/// disk: `setup_token` and `join_ticket` lines become comments saying where they went, the
/// rest (the hostname, the user's comments) stays. `None` when the result would still hold
/// a secret (such as a multi-line string): then the caller writes the shipped template.
pub fn without_secrets(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let key = line.trim_start();
        let secret = ["setup_token", "join_ticket"].into_iter().find(|k| {
            key.strip_prefix(k)
                .is_some_and(|r| r.trim_start().starts_with('='))
        });
        match secret {
            Some(k) => {
                out.push_str(&format!(
                    "# {k}: read on first boot and moved to the machine's own disk\n"
                ));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    match SetupFile::parse(&out) {
        Ok(f) if !f.has_secrets() => Some(out),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = include_str!("../dist/uncloud-setup.toml");

    #[test]
    fn the_shipped_template_parses_to_nothing_and_documents_every_key() {
        assert_eq!(SetupFile::parse(TEMPLATE).unwrap(), SetupFile::default());
        for key in ["hostname", "setup_token", "join_ticket"] {
            let uncommented: String = TEMPLATE
                .lines()
                .map(|l| match l.strip_prefix('#') {
                    Some(rest) if rest.starts_with(key) => rest,
                    _ => l,
                })
                .collect::<Vec<_>>()
                .join("\n");
            let f = SetupFile::parse(&uncommented)
                .unwrap_or_else(|e| panic!("the example of {key} does not parse: {e}"));
            assert_ne!(
                f,
                SetupFile::default(),
                "{key} has no commented-out example"
            );
        }
    }

    #[test]
    fn a_filled_in_file_is_read_and_checked() {
        let f = SetupFile::parse(
            "hostname = \"pi-kitchen\"\nsetup_token = \"pick-a-long-random-token \"\n",
        )
        .unwrap();
        assert_eq!(f.hostname.as_deref(), Some("pi-kitchen"));
        assert_eq!(f.setup_token.as_deref(), Some("pick-a-long-random-token"));
        assert!(f.has_secrets());
    }

    #[test]
    fn bad_files_are_named_errors() {
        let e = SetupFile::parse("hostnme = \"x\"").unwrap_err().to_string();
        assert!(e.contains("hostnme"), "{e}");
        let e = SetupFile::parse("hostname = \"pi_kitchen\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pi_kitchen") && e.contains("letters"), "{e}");
        let e = SetupFile::parse("setup_token = \"short\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("16 to 128"), "{e}");
        assert!(SetupFile::parse("hostname = ").is_err());
        // A mistake next to a secret names the place, never the secret.
        for bad in [
            "setup_token = my-secret-token-value\n",
            "setup_tokn = \"my-secret-token-value\"\n",
            "setup_token = \"my-secret-token\\qvalue\"\n",
            "setup_token = \"my-secret token-value\"\n",
        ] {
            let e = SetupFile::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("secret"), "{bad:?} gave {e}");
        }
        let e = SetupFile::parse("# x\nhostname = \"pi\"\nsetup_token = oops\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn hostnames() {
        for ok in ["pi", "pi-kitchen", "vps-1.example.com", "a1"] {
            check_hostname(ok).unwrap();
        }
        for bad in [
            "",
            "-pi",
            "pi-",
            "a..b",
            "pi kitchen",
            &"a".repeat(64),
            &format!("{}.{}", "a".repeat(40), "b".repeat(30)),
        ] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        // The file is whatever someone typed on another computer: any text gives a value or
        // an error, never a panic, and what is written back never holds a secret.
        #[test]
        fn any_text_parses_or_errs_and_scrubbing_leaves_no_secret(
            text in "(hostname|setup_token|join_ticket|#|=|\"|'|\\[|\\]|[a-z0-9 .-]|\n){0,80}"
        ) {
            let _ = SetupFile::parse(&text);
            if let Some(out) = without_secrets(&text) {
                proptest::prop_assert!(!SetupFile::parse(&out).unwrap().has_secrets());
            }
        }

        #[test]
        fn any_hostname_check_is_total(h in "\\PC{0,300}") {
            let _ = check_hostname(&h);
        }
    }

    #[test]
    fn secrets_are_scrubbed_and_the_rest_kept() {
        let text = "# my Pi\nhostname = \"pi-kitchen\"\nsetup_token = \"pick-a-long-random-token\"\n  join_ticket=\"abc\"\n";
        let out = without_secrets(text).unwrap();
        assert!(
            out.contains("# my Pi\nhostname = \"pi-kitchen\"\n"),
            "{out}"
        );
        assert!(!out.contains("pick-a-long"), "{out}");
        assert!(!out.contains("abc"), "{out}");
        assert_eq!(
            SetupFile::parse(&out).unwrap().hostname.as_deref(),
            Some("pi-kitchen")
        );
        // A multi-line string cannot be scrubbed line by line: the caller falls back.
        let multi = "join_ticket = \"\"\"\nabc\n\"\"\"\n";
        assert_eq!(without_secrets(multi), None);
        assert_eq!(without_secrets(TEMPLATE).as_deref(), Some(TEMPLATE));
    }
}
