//! Text from users and their code, bound to text columns on every backend.
//!
//! PostgreSQL refuses U+0000 in any `text` or `varchar` value ("invalid byte sequence for
//! encoding \"UTF8\": 0x00"), while MySQL/MariaDB and SQLite store it. Every `String` the
//! library binds falls in one of two kinds, decided here once:
//!
//! - **Names** (ids, keys, queue names, worker and executor ids, cron expressions, time zones)
//!   are refused with [`Error::InvalidArgument`] when they hold U+0000 or do not fit their
//!   column ([`check_name`]), before anything is written, by every storage alike. A read by a
//!   name that no write accepts answers as for any id that is not stored ([`storable`]),
//!   without asking the database.
//! - **Free text** (payloads: inputs and outputs; messages: a record's processing error) is
//!   stored losslessly: [`encode`] writes U+0000 as `␀0` and the escape character `␀`
//!   (U+2400, SYMBOL FOR NULL) as `␀␀`, and [`decode`] undoes it. The same stored form on every
//!   backend, so a database can move between backends and every storage reads back exactly
//!   what it was given; text without either character (nearly all of it) is stored as it is,
//!   and a NUL shows as `␀0` to an operator reading the column.
//!
//! JSON columns need neither: JSON writes U+0000 as the escape `\u0000` (see
//! [`json_expr`](super::json_expr) for PostgreSQL's `jsonb` caveat).

use std::borrow::Cow;

use crate::error::{Error, Result};

/// The escape character of stored free text: U+2400 SYMBOL FOR NULL.
const ESCAPE: char = '\u{2400}';

/// Whether `text` needs [`encode`] to change it.
fn needs_escape(text: &str) -> bool {
    // `\0` is one byte; the escape's first byte (0xE2) starts many characters, so it is
    // searched as a whole.
    text.as_bytes().contains(&0) || text.contains(ESCAPE)
}

/// The stored form of free text: U+0000 as `␀0`, `␀` as `␀␀`, everything else as given.
pub(crate) fn encode(text: &str) -> Cow<'_, str> {
    if !needs_escape(text) {
        return Cow::Borrowed(text);
    }
    let mut stored = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\0' => {
                stored.push(ESCAPE);
                stored.push('0');
            }
            ESCAPE => {
                stored.push(ESCAPE);
                stored.push(ESCAPE);
            }
            c => stored.push(c),
        }
    }
    Cow::Owned(stored)
}

/// [`encode`] of an owned value, without a copy when nothing changes.
pub(crate) fn encode_owned(text: String) -> String {
    match encode(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(stored) => stored,
    }
}

/// [`encode`] of an optional value.
pub(crate) fn encode_opt(text: Option<String>) -> Option<String> {
    text.map(encode_owned)
}

/// The text whose stored form is `stored` (the inverse of [`encode`]). A `␀` followed by
/// anything else, which [`encode`] never writes (a value stored behind the library's back),
/// is kept as it is.
pub(crate) fn decode(stored: String) -> String {
    if !stored.contains(ESCAPE) {
        return stored;
    }
    let mut text = String::with_capacity(stored.len());
    let mut chars = stored.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ESCAPE {
            match chars.peek() {
                Some('0') => {
                    chars.next();
                    text.push('\0');
                    continue;
                }
                Some(&ESCAPE) => {
                    chars.next();
                }
                _ => {}
            }
        }
        text.push(c);
    }
    text
}

/// [`decode`] of an optional value.
pub(crate) fn decode_opt(stored: Option<String>) -> Option<String> {
    stored.map(decode)
}

/// Whether a name can be stored at all: no U+0000. A read by a name that is not storable
/// matches nothing, on every backend.
pub(crate) fn storable(name: &str) -> bool {
    !name.as_bytes().contains(&0)
}

/// Checks a name bound to a column of `max_chars` characters: 1 to `max_chars` characters
/// (`VARCHAR(n)` counts characters on PostgreSQL and MySQL/MariaDB, so every limit of the API
/// is in characters too), without U+0000.
///
/// # Errors
///
/// [`Error::InvalidArgument`] naming `name` and what is wrong.
pub(crate) fn check_name(name: &'static str, value: &str, max_chars: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(name, "must not be empty"));
    }
    // Bytes bound the characters from above: most names are short and ASCII, and need no count.
    if value.len() > max_chars {
        let chars = value.chars().count();
        if chars > max_chars {
            return Err(Error::invalid(
                name,
                format!("must be at most {max_chars} characters, got {chars}"),
            ));
        }
    }
    if !storable(value) {
        return Err(Error::invalid(
            name,
            "must not contain U+0000 (PostgreSQL cannot store it)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_round_trips_through_its_stored_form() {
        for text in [
            "",
            "plain",
            "\0",
            "a\0b",
            "␀",
            "␀0",
            "␀␀0\0␀",
            "\0\0",
            "ü 🚀 \0 ␀",
        ] {
            let stored = encode(text);
            assert!(!stored.contains('\0'), "{stored:?}");
            assert_eq!(decode(stored.into_owned()), text);
        }
        assert!(matches!(encode("plain text"), Cow::Borrowed(_)));
        assert_eq!(encode("a\0b"), "a␀0b");
    }

    #[test]
    fn a_stray_escape_reads_as_it_is() {
        assert_eq!(decode("x␀y␀".to_owned()), "x␀y␀");
    }

    #[test]
    fn names_are_counted_in_characters_and_refuse_nul() {
        assert!(check_name("id", "ééé", 3).is_ok());
        assert!(check_name("id", "éééé", 3).is_err());
        assert!(check_name("id", "", 3).is_err());
        assert!(check_name("id", "a\0", 3).is_err());
        assert!(storable("abc") && !storable("a\0c"));
    }
}
