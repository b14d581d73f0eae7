//! Which statements a cell may run. Each `db` call runs one statement on whichever of the
//! cell's pooled connections is free, and the connection then serves the cell's next
//! request. A statement that leaves state on the connection (an open transaction,
//! a setting, a cursor, a prepared statement, a LISTEN) would leak into that request: a
//! `BEGIN` without its `COMMIT` would hold locks and make every later statement on the
//! connection part of a transaction nobody ends. Those statements are refused before
//! they reach the server.
//!
//! The extended protocol takes exactly one statement per call, so the statement's first
//! keyword, after comments and opening parentheses, says what it is.

/// Statements that change the connection rather than the data, by first keyword, with
/// what a cell does instead.
const SESSION_STATEMENTS: &[(&str, &str)] = &[
    ("BEGIN", TRANSACTION),
    ("START", TRANSACTION),
    ("COMMIT", TRANSACTION),
    ("END", TRANSACTION),
    ("ROLLBACK", TRANSACTION),
    ("ABORT", TRANSACTION),
    ("SAVEPOINT", TRANSACTION),
    ("RELEASE", TRANSACTION),
    ("PREPARE", SESSION),
    ("SET", SETTING),
    ("RESET", SETTING),
    ("DISCARD", SETTING),
    ("DECLARE", SESSION),
    ("FETCH", SESSION),
    ("MOVE", SESSION),
    ("CLOSE", SESSION),
    ("LISTEN", SESSION),
    ("UNLISTEN", SESSION),
    ("DEALLOCATE", SESSION),
];

const TRANSACTION: &str = "each db call is its own transaction; make changes that belong \
                           together one statement (a WITH … INSERT … UPDATE) or a function";
const SETTING: &str = "settings would outlive the request on a pooled connection; \
                       set_config(name, value, true) sets one for the statement it is in";
const SESSION: &str = "session state would outlive the request on a pooled connection";

/// Why a cell may not run `sql`, if it may not.
pub fn refusal(sql: &str) -> Option<String> {
    let word = first_keyword(sql)?;
    SESSION_STATEMENTS
        .iter()
        .find(|(keyword, _)| word.eq_ignore_ascii_case(keyword))
        .map(|(keyword, why)| format!("{keyword} statements are not available to cells: {why}"))
}

/// The first word of `sql` that is not in a comment or an opening parenthesis.
fn first_keyword(sql: &str) -> Option<&str> {
    let mut rest = sql;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(line) = rest.strip_prefix("--") {
            rest = line.split_once('\n').map_or("", |(_, after)| after);
        } else if rest.starts_with("/*") {
            rest = after_block_comment(rest)?;
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// What follows the block comment `text` starts with; PostgreSQL's block comments nest.
/// `None` when it never closes (the server will refuse the statement).
fn after_block_comment(text: &str) -> Option<&str> {
    let mut depth = 0usize;
    let mut at = 0;
    let bytes = text.as_bytes();
    while at + 1 < bytes.len() {
        match &bytes[at..at + 2] {
            b"/*" => {
                depth += 1;
                at += 2;
            }
            b"*/" => {
                depth -= 1;
                at += 2;
                if depth == 0 {
                    return Some(&text[at..]);
                }
            }
            _ => at += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::begin("BEGIN", "BEGIN")]
    #[case::lower_case("begin", "BEGIN")]
    #[case::start_transaction("start transaction isolation level serializable", "START")]
    #[case::commit("COMMIT", "COMMIT")]
    #[case::end("end", "END")]
    #[case::rollback("ROLLBACK", "ROLLBACK")]
    #[case::abort("abort", "ABORT")]
    #[case::savepoint("SAVEPOINT a", "SAVEPOINT")]
    #[case::release("release savepoint a", "RELEASE")]
    #[case::prepare_transaction("PREPARE TRANSACTION 'x'", "PREPARE")]
    #[case::set("SET search_path TO public", "SET")]
    #[case::set_role("set role postgres", "SET")]
    #[case::reset("RESET ALL", "RESET")]
    #[case::discard("DISCARD ALL", "DISCARD")]
    #[case::declare("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "DECLARE")]
    #[case::listen("LISTEN things", "LISTEN")]
    #[case::deallocate("DEALLOCATE ALL", "DEALLOCATE")]
    #[case::after_whitespace("\n\t  BEGIN", "BEGIN")]
    #[case::after_a_line_comment("-- open it\nBEGIN", "BEGIN")]
    #[case::after_a_block_comment("/* open it */ BEGIN", "BEGIN")]
    #[case::after_nested_comments("/* a /* b */ c */begin", "BEGIN")]
    #[case::after_comments_of_both_kinds("/* a */ -- b\n /* c */ commit", "COMMIT")]
    #[case::followed_by_a_semicolon("begin;", "BEGIN")]
    fn session_statements_are_refused_with_their_keyword(#[case] sql: &str, #[case] keyword: &str) {
        let refusal = refusal(sql).unwrap_or_else(|| panic!("{sql:?} was allowed"));
        assert!(
            refusal.starts_with(&format!("{keyword} statements are not available")),
            "{refusal}"
        );
    }

    #[rstest]
    #[case::select("SELECT 1")]
    #[case::parenthesised_select("((select 1))")]
    #[case::insert("INSERT INTO visits VALUES ('/', 1)")]
    #[case::with("WITH a AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM a")]
    #[case::create_table("CREATE TABLE t (id int)")]
    #[case::call("CALL refresh()")]
    #[case::keyword_as_a_prefix("BEGINNING")]
    #[case::settings_as_a_prefix("SETTLE")]
    #[case::a_word_in_a_comment("/* BEGIN */ SELECT 1")]
    #[case::a_word_after_a_line_comment("-- BEGIN\nSELECT 1")]
    #[case::a_function_named_set_config("select set_config('a.b', '1', true)")]
    #[case::empty("")]
    #[case::only_a_comment("-- nothing")]
    #[case::an_open_comment("/* never closed BEGIN")]
    fn data_statements_are_allowed(#[case] sql: &str) {
        assert_eq!(refusal(sql), None, "{sql:?}");
    }
}
