//! Setup tokens and join tickets: what is accepted, and how a token is made up.

use ring::rand::{SecureRandom, SystemRandom};

/// Letters and digits a person reads off a console and types without confusion: no `0`/`o`,
/// `1`/`l`/`i`.
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// A generated token's shape: 5 groups of 5 characters (about 124 bits).
const GROUPS: usize = 5;
const GROUP_LEN: usize = 5;

/// Bounds of a token the user picks (cloud-init, the Pi's boot partition).
pub const TOKEN_MIN: usize = 16;
pub const TOKEN_MAX: usize = 128;
/// Upper bound of a join ticket; tickets are opaque here (apid reads them).
pub const TICKET_MAX: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the setup token has {0} characters; it needs {TOKEN_MIN} to {TOKEN_MAX}")]
    TokenLength(usize),
    // The character itself is not shown: the message goes to the journal and the console,
    // and the text around it is a secret.
    #[error("the {what} may hold only printable ASCII without spaces (character {} is not)", at + 1)]
    Character {
        what: &'static str,
        found: char,
        at: usize,
    },
    #[error("the join ticket is empty")]
    TicketEmpty,
    #[error("the join ticket has {0} bytes; at most {TICKET_MAX} are accepted")]
    TicketLength(usize),
    #[error("no randomness from the kernel")]
    Random,
}

/// Makes up a token such as `k3mqz-8xw2r-...`: 5 groups of 5 from [`ALPHABET`].
pub fn generate_token() -> Result<String, SecretError> {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(GROUPS * (GROUP_LEN + 1));
    let mut byte = [0u8; 1];
    for g in 0..GROUPS {
        if g > 0 {
            out.push('-');
        }
        let mut n = 0;
        while n < GROUP_LEN {
            rng.fill(&mut byte).map_err(|_| SecretError::Random)?;
            // Rejection sampling: 248 = 8 * 31 keeps every character equally likely.
            if (byte[0] as usize) < ALPHABET.len() * (256 / ALPHABET.len()) {
                out.push(ALPHABET[byte[0] as usize % ALPHABET.len()] as char);
                n += 1;
            }
        }
    }
    Ok(out)
}

/// A token the user gave, trimmed of surrounding whitespace (a file's trailing newline).
pub fn check_token(raw: &str) -> Result<String, SecretError> {
    let token = raw.trim();
    printable("setup token", token)?;
    let n = token.chars().count();
    if !(TOKEN_MIN..=TOKEN_MAX).contains(&n) {
        return Err(SecretError::TokenLength(n));
    }
    Ok(token.to_owned())
}

/// A join ticket the user gave, trimmed.
pub fn check_ticket(raw: &str) -> Result<String, SecretError> {
    let ticket = raw.trim();
    if ticket.is_empty() {
        return Err(SecretError::TicketEmpty);
    }
    if ticket.len() > TICKET_MAX {
        return Err(SecretError::TicketLength(ticket.len()));
    }
    printable("join ticket", ticket)?;
    Ok(ticket.to_owned())
}

fn printable(what: &'static str, s: &str) -> Result<(), SecretError> {
    match s.chars().enumerate().find(|(_, c)| !c.is_ascii_graphic()) {
        Some((at, found)) => Err(SecretError::Character { what, found, at }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_documented_shape_and_differ() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        let groups: Vec<&str> = a.split('-').collect();
        assert_eq!(groups.len(), GROUPS, "{a}");
        for g in groups {
            assert_eq!(g.len(), GROUP_LEN, "{a}");
            assert!(g.bytes().all(|c| ALPHABET.contains(&c)), "{a}");
        }
        // A generated token is also a valid user token.
        assert_eq!(check_token(&a).unwrap(), a);
    }

    #[test]
    fn every_alphabet_character_is_drawn() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.extend(generate_token().unwrap().bytes().filter(|c| *c != b'-'));
        }
        assert_eq!(seen.len(), ALPHABET.len());
    }

    #[test]
    fn user_tokens_are_trimmed_and_bounded() {
        assert_eq!(
            check_token("  pick-a-long-random-token\n").unwrap(),
            "pick-a-long-random-token"
        );
        assert_eq!(check_token("short"), Err(SecretError::TokenLength(5)));
        assert_eq!(
            check_token(&"x".repeat(129)),
            Err(SecretError::TokenLength(129))
        );
        assert!(matches!(
            check_token("has a space inside it"),
            Err(SecretError::Character {
                found: ' ',
                at: 3,
                ..
            })
        ));
        assert!(matches!(
            check_token("tökentökentökentöken"),
            Err(SecretError::Character { found: 'ö', .. })
        ));
    }

    #[test]
    fn tickets_are_opaque_but_bounded() {
        assert_eq!(check_ticket("abc.def\n").unwrap(), "abc.def");
        assert_eq!(check_ticket(" \n"), Err(SecretError::TicketEmpty));
        assert_eq!(
            check_ticket(&"a".repeat(TICKET_MAX + 1)),
            Err(SecretError::TicketLength(TICKET_MAX + 1))
        );
        assert!(check_ticket("two\nlines").is_err());
    }
}
