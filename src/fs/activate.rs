//! An open `ctl/activate` or `ctl/deactivate`: lines run as they complete (an unfinished last
//! line at the writer's close), and what the last one did is read back from the same open file.

use std::path::PathBuf;

use crate::access::Caller;
use crate::activate::{activation, deactivation};
use crate::control::LineBuffer;
use crate::error::DmResult;
use crate::registry::Registry;

/// Which of the two files is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Activate,
    Deactivate,
}

impl Verb {
    fn operation(self) -> &'static str {
        match self {
            Verb::Activate => "activate",
            Verb::Deactivate => "deactivate",
        }
    }
}

pub struct ActivateInput {
    verb: Verb,
    caller: Caller,
    /// The opener's working directory, for relative image paths, as for tables.
    cwd: Option<PathBuf>,
    input: LineBuffer,
    /// The text of what the last line did: empty until one succeeds, and after one fails
    /// (but for what a `--force` deactivation removed before it failed on open devices).
    report: Vec<u8>,
}

impl ActivateInput {
    pub fn new(verb: Verb, caller: Caller, cwd: Option<PathBuf>) -> ActivateInput {
        ActivateInput {
            verb,
            caller,
            cwd,
            input: LineBuffer::default(),
            report: Vec::new(),
        }
    }

    pub fn report(&self) -> &[u8] {
        &self.report
    }

    pub fn write(&mut self, registry: &Registry, data: &[u8]) -> DmResult<()> {
        let op = self.verb.operation();
        let lines = self
            .input
            .push(data)
            .inspect_err(|e| registry.errors.record(op, "", e))?;
        lines.iter().try_for_each(|l| self.run(registry, l))
    }

    /// Runs an unfinished last line (`echo -n disk.img > ctl/activate`).
    pub fn flush(&mut self, registry: &Registry) -> DmResult<()> {
        let op = self.verb.operation();
        match self
            .input
            .take_rest()
            .inspect_err(|e| registry.errors.record(op, "", e))?
        {
            Some(line) => self.run(registry, &line),
            None => Ok(()),
        }
    }

    fn run(&mut self, registry: &Registry, line: &str) -> DmResult<()> {
        match self.verb {
            Verb::Activate => self.activate(registry, line),
            Verb::Deactivate => self.deactivate(registry, line),
        }
    }

    fn activate(&mut self, registry: &Registry, line: &str) -> DmResult<()> {
        let request = match activation::Request::parse(line) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => {
                registry.errors.record("activate", line.trim(), &e);
                return Err(e);
            }
        };
        self.report.clear();
        let major = crate::report::DM_MAJOR;
        let report =
            activation::activate(registry, &self.caller, self.cwd.clone(), &request, major)
                .inspect_err(|e| registry.errors.record("activate", &request.name(), e))?;
        self.report = report.text(major).into_bytes();
        Ok(())
    }

    fn deactivate(&mut self, registry: &Registry, line: &str) -> DmResult<()> {
        let request = match deactivation::Request::parse(line) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => {
                registry.errors.record("deactivate", line.trim(), &e);
                return Err(e);
            }
        };
        self.report.clear();
        let report = deactivation::deactivate(registry, &self.caller, self.cwd.clone(), &request)
            .inspect_err(|e| registry.errors.record("deactivate", &request.name(), e))?;
        self.report = report.text().into_bytes();
        match report.kept_error() {
            Some(e) => {
                registry.errors.record("deactivate", &request.name(), &e);
                Err(e)
            }
            None => Ok(()),
        }
    }
}
