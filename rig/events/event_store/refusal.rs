//! Which database errors are about the event (retrying the same INSERT gets the same answer:
//! dead-letter it now, with the reason) and which are about the database (unavailable, busy,
//! misconfigured: retry later). Told apart by the server's error number, MySQL 8.4's and
//! MariaDB's (they share the classic numbers; the JSON and CHECK ones differ).
//!
//! Anything not listed here is treated as transient: a wrong guess that way only costs the
//! message's remaining attempts (the worker dead-letters it itself on its last one), a wrong
//! guess the other way would dead-letter good events while, say, a password is being rotated.

/// Server error numbers that refuse the data itself.
pub const PERMANENT: &[(u16, &str)] = &[
    (1048, "a NOT NULL column got NULL"),
    (1264, "value out of range for its column"),
    (1265, "data truncated for its column"),
    (1292, "incorrect datetime or value"),
    (1300, "invalid character string"),
    (1366, "incorrect string value for its column"),
    (1367, "illegal value for its type"),
    (1406, "data too long for its column"),
    (1411, "incorrect value for a function"),
    (1690, "value out of range"),
    (3140, "invalid JSON text (MySQL)"),
    (3141, "invalid JSON text in argument (MySQL)"),
    (3144, "JSON text in a charset other than utf8mb4 (MySQL)"),
    (3146, "invalid data type for JSON (MySQL)"),
    (3157, "JSON document nested too deep (MySQL)"),
    (3819, "CHECK constraint violated (MySQL)"),
    (4025, "CHECK constraint failed, e.g. json_valid (MariaDB)"),
];

/// `Some(description)` when the server refused the statement because of its data.
pub fn permanent(error: &sqlx::Error) -> Option<&'static str> {
    let number = super::mysql_error_number(error)?;
    PERMANENT
        .iter()
        .find(|(n, _)| *n == number)
        .map(|(_, what)| *what)
}

/// Server error numbers that refuse an account what it asked for: the answer a check wants
/// when it asks whether a credential is kept out. Anything else (no connection, a timeout, a
/// syntax error) means the question was not answered, never that access was refused.
pub const ACCESS_DENIED: &[(u16, &str)] = &[
    (1044, "access denied to the database"),
    (1045, "access denied for the user (password or host)"),
    (1142, "command denied on the table"),
    (1143, "command denied on the column"),
    (1227, "the statement needs a privilege the account lacks"),
    (1370, "execute denied on the routine"),
    (1698, "access denied for the user (no password login)"),
];

/// MySQL's number for a `SIGNAL SQLSTATE '45000'` from a trigger: how the ledger's
/// append-only triggers refuse UPDATE and DELETE (migrations/…_event_store_append_only.sql).
pub const SIGNALLED: u16 = 1644;

/// `Some((number, reason))` when the server refused the account what it asked
/// ([`ACCESS_DENIED`], or one of `also` — e.g. [`SIGNALLED`] for the ledger's triggers);
/// `None` when the question could not be asked or got another answer: no evidence either way.
pub fn refused_by_server(
    error: &sqlx::Error,
    also: &[(u16, &'static str)],
) -> Option<(u16, &'static str)> {
    let number = super::mysql_error_number(error)?;
    ACCESS_DENIED
        .iter()
        .chain(also)
        .find(|(n, _)| *n == number)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_server_refusals_of_the_data_are_permanent() {
        // Connection trouble carries no server error number: transient.
        let io = sqlx::Error::Io(std::io::Error::other("connection reset"));
        assert_eq!(permanent(&io), None);
        assert_eq!(permanent(&sqlx::Error::PoolTimedOut), None);
        // The list holds no number that means "the server is unwell" or "not allowed".
        for transient in [1040u16, 1045, 1142, 1205, 1213, 1290, 1836, 2002, 2013] {
            assert!(
                PERMANENT.iter().all(|(n, _)| *n != transient),
                "{transient} must stay transient"
            );
        }
    }

    #[test]
    fn only_a_server_refusal_counts_as_access_refused() {
        for not_asked in [
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            sqlx::Error::PoolTimedOut,
            sqlx::Error::Protocol("unexpected packet".into()),
        ] {
            assert_eq!(refused_by_server(&not_asked, &[]), None, "{not_asked}");
        }
    }
}
