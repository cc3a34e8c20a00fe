//! The reference worker's acceptance mode: staging acceptance runs through the acceptance
//! subscriptions, and the worker must keep to one run's probes and to the acceptance database.

/// The reference worker's acceptance mode ([`super::WorkerOptions::acceptance`]): on
/// an acceptance subscription it processes only the probes whose value is `probe_value` (one
/// scenario case of one run), releases other probes for the runs they belong to, and writes
/// only to one of `databases`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptanceMode {
    /// The probe attribute's value this worker processes.
    pub probe_value: String,
    /// Where acceptance rows may go: the Terraform's acceptance databases (`events_acceptance`).
    pub databases: Vec<String>,
}

impl AcceptanceMode {
    /// Refuses a ledger that is not an acceptance database: an acceptance run never writes to
    /// the real `events`.
    pub fn admit_database(&self, database: &str) -> anyhow::Result<()> {
        if self.databases.iter().any(|d| d == database) {
            return Ok(());
        }
        anyhow::bail!(
            "the worker's database is {database:?}: in acceptance mode it writes only to {} (the Terraform's acceptance database), never to the ledger; export DB_EVENT_STORE_DATABASE={}",
            if self.databases.is_empty() {
                "an acceptance database, and this environment declares none".to_string()
            } else {
                self.databases.join(" or ")
            },
            self.databases
                .first()
                .map_or("events_acceptance", String::as_str)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptance_mode_writes_only_to_an_acceptance_database() {
        let mode = AcceptanceMode {
            probe_value: "scenarios-1/ordering-0".into(),
            databases: vec!["events_acceptance".into()],
        };
        assert!(mode.admit_database("events_acceptance").is_ok());
        let refused = mode.admit_database("events").unwrap_err().to_string();
        assert!(
            refused.contains("DB_EVENT_STORE_DATABASE=events_acceptance"),
            "{refused}"
        );
        let none = AcceptanceMode {
            databases: Vec::new(),
            ..mode
        };
        assert!(none.admit_database("events").is_err());
    }
}
