//! The result lines of preflight checks (`cdcsync check`, and the reader's and applier's own
//! start-up checks), shared so every component reports failures the same way: what was checked,
//! what was found, and how to fix it.

use std::fmt;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// The setting is as required.
    Pass,
    /// Works, but an operator should know (e.g. short binlog retention).
    Warn,
    /// Would lose data or fail; the pipeline must not start.
    Fail,
}

/// One line of a preflight report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// What was checked, e.g. `binlog_format`.
    pub name: String,
    /// Pass, warn or fail.
    pub status: CheckStatus,
    /// What was found, e.g. `ROW`.
    pub detail: String,
    /// How to fix it (empty on pass).
    pub fix: String,
}

impl CheckReport {
    /// A passing check.
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        CheckReport {
            name: name.into(),
            status: CheckStatus::Pass,
            detail: detail.into(),
            fix: String::new(),
        }
    }

    /// A warning with its advice.
    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        CheckReport {
            name: name.into(),
            status: CheckStatus::Warn,
            detail: detail.into(),
            fix: fix.into(),
        }
    }

    /// A failure with its fix.
    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        CheckReport {
            name: name.into(),
            status: CheckStatus::Fail,
            detail: detail.into(),
            fix: fix.into(),
        }
    }

    /// Whether this check blocks the pipeline.
    pub fn is_failure(&self) -> bool {
        self.status == CheckStatus::Fail
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            CheckStatus::Pass => "PASS",
            CheckStatus::Warn => "WARN",
            CheckStatus::Fail => "FAIL",
        };
        write!(f, "{tag}  {:<28} {}", self.name, self.detail)?;
        if !self.fix.is_empty() {
            write!(f, "\n      fix: {}", self.fix)?;
        }
        Ok(())
    }
}
