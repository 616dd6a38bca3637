//! The shapes of names in definitions, and "did you mean" suggestions for misspelt ones.
//!
//! The patterns are written as regular expressions for the JSON Schema (editors check them as
//! you type); the checks here implement the same patterns by hand so the crate needs no regex
//! engine.

/// Names of definitions (`name:` of a document): they appear in URLs and file names.
pub const DEFINITION_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,62}$";
/// Machine instance ids (`instances:`, a guard's `machine:`), as used in `/machines/{id}/state`.
pub const MACHINE_ID_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$";
/// State and event names, as sent in `?state=NAME`.
pub const STATE_NAME_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$";

/// Longest definition name, in characters.
pub const MAX_DEFINITION_NAME_CHARS: usize = 63;
/// Longest machine id, in characters.
pub const MAX_MACHINE_ID_CHARS: usize = 128;
/// Longest state or event name, in characters.
pub const MAX_STATE_NAME_CHARS: usize = 128;

/// Whether `name` matches [`DEFINITION_NAME_PATTERN`].
pub fn is_valid_definition_name(name: &str) -> bool {
    let lower_or_digit = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    matches_shape(name, MAX_DEFINITION_NAME_CHARS, lower_or_digit, |c| {
        lower_or_digit(c) || matches!(c, '.' | '_' | '-')
    })
}

/// Whether `id` matches [`MACHINE_ID_PATTERN`].
pub fn is_valid_machine_id(id: &str) -> bool {
    matches_shape(
        id,
        MAX_MACHINE_ID_CHARS,
        |c| c.is_ascii_alphanumeric(),
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
    )
}

/// Whether `name` matches [`STATE_NAME_PATTERN`] (state and event names).
pub fn is_valid_state_name(name: &str) -> bool {
    matches_shape(
        name,
        MAX_STATE_NAME_CHARS,
        |c| c.is_ascii_alphanumeric() || c == '_',
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
    )
}

fn matches_shape(
    text: &str,
    max_chars: usize,
    first: impl Fn(char) -> bool,
    rest: impl Fn(char) -> bool,
) -> bool {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) if first(c) => {}
        _ => return false,
    }
    // All accepted characters are ASCII, so bytes and characters agree once they all pass.
    chars.all(rest) && text.len() <= max_chars
}

/// What a definition name may look like, for error messages.
pub const DEFINITION_NAME_RULE: &str = "use 1 to 63 lowercase letters, digits, `.`, `_` or `-`, \
     starting with a letter or a digit";
/// What a machine id may look like, for error messages.
pub const MACHINE_ID_RULE: &str = "use 1 to 128 letters, digits, `.`, `_` or `-`, starting with \
     a letter or a digit";
/// What a state or event name may look like, for error messages.
pub const STATE_NAME_RULE: &str = "use 1 to 128 letters, digits, `.`, `_` or `-`, starting with \
     a letter, a digit or `_`";

/// The edit distance between two strings (optimal string alignment: insertions, deletions,
/// substitutions and swaps of neighbouring characters each cost 1), so `tragets` is 1 away from
/// `targets`. Strings longer than 256 characters are never close to anything.
pub fn edit_distance(a: &str, b: &str) -> usize {
    const MAX_COMPARED_CHARS: usize = 256;
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len() > MAX_COMPARED_CHARS || b.len() > MAX_COMPARED_CHARS {
        return usize::MAX;
    }
    let width = b.len() + 1;
    // Three rows of the dynamic-programming table: two back, one back, current.
    let mut before_previous = vec![0usize; width];
    let mut previous: Vec<usize> = (0..width).collect();
    let mut current = vec![0usize; width];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..width {
            let substitution = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + substitution);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before_previous[j - 2] + 1);
            }
            current[j] = best;
        }
        std::mem::swap(&mut before_previous, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
pub fn closest<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let max_distance = match word.chars().count() {
        0..=3 => 1,
        4..=6 => 2,
        _ => 3,
    };
    let lowered = word.to_lowercase();
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| {
            // A difference only in case counts as one edit, however many letters differ.
            let distance = if c.to_lowercase() == lowered {
                1
            } else {
                edit_distance(word, c)
            };
            (distance, c)
        })
        // Replacing most of a short word is not a typo: `to` is not a misspelt `on`.
        .filter(|(distance, c)| *distance <= max_distance && *distance < c.chars().count())
        // Ties go to the first name in sorted order, so the suggestion never depends on the
        // order candidates come in (a hash map's, say).
        .min_by_key(|(distance, c)| (*distance, *c))
        .map(|(_, c)| c)
}

/// " Did you mean `x`?" when a close candidate exists, or an empty string.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    match closest(word, candidates) {
        Some(candidate) => format!(" Did you mean `{candidate}`?"),
        None => String::new(),
    }
}

/// "`a`, `b` or `c`", for messages that list what is allowed.
pub fn list_of<'a, I>(items: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    let quoted: Vec<String> = items.into_iter().map(|s| format!("`{s}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_their_patterns() {
        assert!(is_valid_definition_name("three-tier-db"));
        assert!(is_valid_definition_name("a"));
        assert!(!is_valid_definition_name("Three"));
        assert!(!is_valid_definition_name("-x"));
        assert!(!is_valid_definition_name(&"a".repeat(64)));
        assert!(is_valid_definition_name(&"a".repeat(63)));
        assert!(is_valid_machine_id("DB-1.prod_east"));
        assert!(!is_valid_machine_id("_db"));
        assert!(!is_valid_machine_id("db 1"));
        assert!(is_valid_state_name("_private"));
        assert!(is_valid_state_name("replicas_installing"));
        assert!(!is_valid_state_name(".hidden"));
        assert!(!is_valid_state_name(""));
        assert!(!is_valid_state_name("é"));
    }

    #[test]
    fn edit_distance_counts_swaps_as_one() {
        assert_eq!(edit_distance("tragets", "targets"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn suggestions_are_only_for_near_misses() {
        let keys = ["name", "description", "on", "timer", "guard", "final"];
        assert_eq!(closest("timr", keys), Some("timer"));
        assert_eq!(closest("gaurd", keys), Some("guard"));
        assert_eq!(closest("Name", keys), Some("name"));
        assert_eq!(closest("tragets", keys), None);
        assert_eq!(closest("to", keys), None);
        assert_eq!(list_of(["a", "b", "c"]), "`a`, `b` or `c`");
        assert_eq!(list_of(["a"]), "`a`");
    }
}
