//! An open `ctl/activate`: lines run as they complete (an unfinished last line at the writer's
//! close), and what the last one made is read back from the same open file.

use std::path::PathBuf;

use crate::access::Caller;
use crate::activate::activation::{self, Request};
use crate::control::LineBuffer;
use crate::error::DmResult;
use crate::registry::Registry;

pub struct ActivateInput {
    caller: Caller,
    /// The opener's working directory, for relative image paths, as for tables.
    cwd: Option<PathBuf>,
    input: LineBuffer,
    /// The text of what the last line did: empty until one succeeds, and after one fails.
    report: Vec<u8>,
}

impl ActivateInput {
    pub fn new(caller: Caller, cwd: Option<PathBuf>) -> ActivateInput {
        ActivateInput {
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
        let lines = self
            .input
            .push(data)
            .inspect_err(|e| registry.errors.record("activate", "", e))?;
        lines.iter().try_for_each(|l| self.run(registry, l))
    }

    /// Runs an unfinished last line (`echo -n disk.img > ctl/activate`).
    pub fn flush(&mut self, registry: &Registry) -> DmResult<()> {
        match self
            .input
            .take_rest()
            .inspect_err(|e| registry.errors.record("activate", "", e))?
        {
            Some(line) => self.run(registry, &line),
            None => Ok(()),
        }
    }

    fn run(&mut self, registry: &Registry, line: &str) -> DmResult<()> {
        let request = match Request::parse(line) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => {
                registry.errors.record("activate", line.trim(), &e);
                return Err(e);
            }
        };
        self.report.clear();
        let report = activation::activate(registry, &self.caller, self.cwd.clone(), &request)
            .inspect_err(|e| registry.errors.record("activate", &request.name(), e))?;
        self.report = report.text(crate::report::DM_MAJOR).into_bytes();
        Ok(())
    }
}
