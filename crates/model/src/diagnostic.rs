//! Errors in definitions, each pointing at a place in a file.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a definition. `line` and `column` are 1-based; 0 means "the whole file".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub severity: Severity,
    /// A stable, kebab-case code (`unknown-key`, `duplicate-state`, ...), for tests and docs.
    pub code: String,
    pub message: String,
}

impl Diagnostic {
    pub fn error(
        file: &str,
        line: u64,
        column: u64,
        code: &str,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.to_string(),
            line,
            column,
            severity: Severity::Error,
            code: code.to_string(),
            message: message.into(),
        }
    }

    pub fn warning(
        file: &str,
        line: u64,
        column: u64,
        code: &str,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, line, column, code, message)
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl std::fmt::Display for Diagnostic {
    /// `file:line:column: error[code]: message`, the form editors and CI logs link to.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {}[{}]: {}",
            self.file, self.line, self.column, severity, self.code, self.message
        )
    }
}
