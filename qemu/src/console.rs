//! The serial console as text.

/// Removes ANSI escape sequences (systemd's colours, cursor moves) and carriage returns.
pub fn strip_escapes(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ parameters final-byte (0x40..=0x7e); other escapes: ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The first line of `text` for which `matches` holds.
pub fn find_line(text: &str, matches: impl Fn(&str) -> bool) -> Option<&str> {
    text.lines().find(|line| matches(line))
}

/// The last `n` lines of `text`, for error messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_status_lines_become_plain_text() {
        let raw = "[\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mmulti-user.target\x1b[0m - Multi-User System.\r\n";
        assert_eq!(
            strip_escapes(raw),
            "[  OK  ] Reached target multi-user.target - Multi-User System.\n"
        );
    }

    #[test]
    fn lines_are_found_and_tails_are_short() {
        let text = "a\nuncloud: x ready\nb\nc";
        assert_eq!(
            find_line(text, |l| l.ends_with(" ready")),
            Some("uncloud: x ready")
        );
        assert_eq!(find_line(text, |l| l == "z"), None);
        assert_eq!(tail(text, 2), "b\nc");
        assert_eq!(tail(text, 10), text);
    }

    #[test]
    fn a_truncated_escape_at_the_end_is_dropped() {
        assert_eq!(strip_escapes("ok\x1b[0;3"), "ok");
        assert_eq!(strip_escapes("ok\x1b"), "ok");
    }
}
