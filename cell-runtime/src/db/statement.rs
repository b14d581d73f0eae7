//! Which statements a cell is told not to run. Each `db` call runs one statement on
//! whichever of the cell's pooled connections is free, and the connection then serves the
//! cell's next request. Whatever a statement leaves on the connection is cleared or the
//! connection closed before that (see `session`); this module only turns the statements
//! that would be cleared away into a refusal that says what to do instead.
//!
//! The extended protocol takes exactly one statement per call, so the statement's first
//! keyword, after comments, empty statements and opening parentheses, says what it is. The
//! keyword is found with sqlparser's PostgreSQL tokenizer, which reads comments as the
//! server does (`\r` ends a `--` comment, `/* */` nest).

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

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
    ("EXECUTE", SESSION),
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

pub(crate) const TRANSACTION: &str =
    "each db call is its own transaction; make changes that belong \
                           together one statement (a WITH … INSERT … UPDATE) or a function";
const SETTING: &str = "settings would outlive the request on a pooled connection; \
                       set_config(name, value, true) sets one for the statement it is in";
pub(crate) const SESSION: &str = "session state would outlive the request on a pooled connection";

/// Why a cell may not run `sql`, if it may not.
pub fn refusal(sql: &str) -> Option<SessionStatement> {
    let word = first_keyword(sql)?;
    SESSION_STATEMENTS
        .iter()
        .find(|(keyword, _)| word.eq_ignore_ascii_case(keyword))
        .map(|&(keyword, why)| SessionStatement { keyword, why })
}

/// A statement whose effect would outlive the call on a pooled connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{keyword} statements are not available to cells: {why}")]
pub struct SessionStatement {
    keyword: &'static str,
    why: &'static str,
}

/// How much of a statement is read for its first keyword. A statement whose keyword
/// comes later is not refused here; what it leaves is cleared all the same.
const READ_AT_MOST: usize = 4096;

/// The first word of `sql` that is not in a comment, an empty statement or an opening
/// parenthesis.
fn first_keyword(sql: &str) -> Option<String> {
    let head = &sql[..sql.floor_char_boundary(READ_AT_MOST)];
    let mut tokens = Vec::new();
    // A statement cut short or never finished (an open comment or string) still has the
    // tokens read before the tokenizer gave up; the server judges the rest.
    let _ =
        Tokenizer::new(&PostgreSqlDialect {}, head).tokenize_with_location_into_buf(&mut tokens);
    let first = tokens.into_iter().map(|t| t.token).find(|token| {
        !matches!(
            token,
            Token::Whitespace(_) | Token::SemiColon | Token::LParen
        )
    })?;
    match first {
        Token::Word(word) if word.quote_style.is_none() => Some(word.value),
        _ => None,
    }
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
    #[case::execute("EXECUTE s1", "EXECUTE")]
    #[case::after_whitespace("\n\t  BEGIN", "BEGIN")]
    #[case::after_a_line_comment("-- open it\nBEGIN", "BEGIN")]
    #[case::after_a_block_comment("/* open it */ BEGIN", "BEGIN")]
    #[case::after_nested_comments("/* a /* b */ c */begin", "BEGIN")]
    #[case::after_comments_of_both_kinds("/* a */ -- b\n /* c */ commit", "COMMIT")]
    #[case::followed_by_a_semicolon("begin;", "BEGIN")]
    #[case::after_an_empty_statement(";BEGIN", "BEGIN")]
    #[case::after_empty_statements_and_space(" ; ;\n begin", "BEGIN")]
    #[case::after_a_line_comment_ended_by_a_carriage_return("--x\rBEGIN", "BEGIN")]
    #[case::after_a_line_comment_ended_by_crlf("-- x\r\nstart transaction", "START")]
    #[case::after_a_form_feed("\u{c}begin", "BEGIN")]
    #[case::after_a_comment_holding_a_dollar_quote("/* $$ */ LISTEN x", "LISTEN")]
    #[case::set_session_authorization("SET SESSION AUTHORIZATION postgres", "SET")]
    fn session_statements_are_refused_with_their_keyword(#[case] sql: &str, #[case] keyword: &str) {
        let refusal = refusal(sql)
            .unwrap_or_else(|| panic!("{sql:?} was allowed"))
            .to_string();
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
    #[case::a_nested_comment_hiding_a_word("/* a /* BEGIN */ b */ SELECT 1")]
    #[case::a_word_in_a_dollar_quote("SELECT $x$ BEGIN $x$")]
    #[case::a_quoted_identifier("\"begin\"")]
    #[case::a_keyword_past_what_is_read(&format!("/*{}*/ BEGIN", " ".repeat(READ_AT_MOST)))]
    fn data_statements_are_allowed(#[case] sql: &str) {
        assert_eq!(refusal(sql), None, "{sql:?}");
    }
}
