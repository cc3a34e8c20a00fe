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
}
