//! dmfs: the Linux device mapper, in user space, behind a filesystem.

mod backing;
mod control;
mod daemon;
mod device;
mod errlog;
mod error;
mod fs;
mod registry;
mod report;
mod table;
mod target;
mod units;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dmfs", version, about = "The Linux device mapper as a filesystem")]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Mount dmfs on MNT; returns once the mount is ready and serves in the background.
    Mount {
        /// Mount point (an existing directory).
        mountpoint: PathBuf,
        /// Stay in the foreground, logging to stderr.
        #[arg(short, long)]
        foreground: bool,
        /// Let other users use the mount (needs user_allow_other in /etc/fuse.conf for non-root).
        #[arg(long)]
        allow_other: bool,
        /// Log level: error, warn, info, debug, trace.
        #[arg(long, default_value = "info")]
        log_level: log::LevelFilter,
        /// Append the log to this file (default: stderr with -f, none in the background).
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// Request threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// Unmount a dmfs mount (same as umount MNT).
    Umount {
        mountpoint: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Verb::Mount { mountpoint, foreground, allow_other, log_level, log_file, threads } => {
            daemon::mount(daemon::MountOptions { mountpoint, foreground, allow_other, log_level, log_file, threads });
        }
        Verb::Umount { mountpoint } => {
            if let Err(e) = daemon::umount(&mountpoint) {
                eprintln!("dmfs: {e}");
                std::process::exit(1);
            }
        }
    }
}
