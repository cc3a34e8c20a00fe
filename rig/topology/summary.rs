//! The topology as a person reads it (`rig topology`): one line per subscription, the
//! settings the policy checks are about. Tools take the JSON (`rig topology --json`).

use std::fmt::Write as _;

use crate::Topology;

impl Topology {
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "environment: {}", self.environment);
        let topics: Vec<&str> = self.topics.iter().map(|t| t.name.as_str()).collect();
        let _ = writeln!(out, "topics: {}", topics.join(", "));
        let _ = writeln!(out, "\nsubscriptions:");
        let mut rows = vec![[
            "name".to_string(),
            "topic".into(),
            "purpose".into(),
            "ordered".into(),
            "ack deadline".into(),
            "dead letter".into(),
            "retry backoff".into(),
            "filter".into(),
        ]];
        for s in &self.subscriptions {
            rows.push([
                s.name.clone(),
                s.topic.clone(),
                s.purpose.clone().unwrap_or_else(|| "-".into()),
                if s.enable_message_ordering {
                    "yes"
                } else {
                    "no"
                }
                .into(),
                format!("{}s", s.ack_deadline_seconds),
                s.dead_letter.as_ref().map_or_else(
                    || "-".into(),
                    |d| format!("{} after {} attempts", d.topic, d.max_delivery_attempts),
                ),
                s.retry.as_ref().map_or_else(
                    || "-".into(),
                    |r| {
                        format!(
                            "{}s..{}s",
                            r.minimum_backoff.as_secs(),
                            r.maximum_backoff.as_secs()
                        )
                    },
                ),
                s.filter.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        let widths: Vec<usize> = (0..8)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        for row in &rows {
            let mut line = String::from(" ");
            for (i, cell) in row.iter().enumerate() {
                let _ = write!(line, " {cell:<width$}", width = widths[i]);
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let b = &self.bucket;
        let _ = writeln!(
            out,
            "\nbucket: {} (uniform bucket-level access: {}, public access prevention: {}, objects deleted after: {})",
            b.name,
            if b.uniform_bucket_level_access {
                "on"
            } else {
                "off"
            },
            b.public_access_prevention,
            b.delete_after_days
                .map_or_else(|| "never".to_string(), |d| format!("{d} days"))
        );
        out
    }
}
