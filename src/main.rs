//! The `dmfs` command: clap turns the command line into a call of the daemon (`mount`,
//! `umount`) or of a dmsetup-style verb on a mount (`cli`); everything else is the library.

use dmfs::{access, cli, coherence, daemon, fs};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dmfs",
    version,
    about = "The Linux device mapper as a filesystem",
    long_about = "The Linux device mapper as a filesystem.\n\n\
        `dmfs mount MNT` serves the filesystem; the other verbs work like dmsetup's on a mount: \
        the one named by --mount, else $DMFS_MOUNT, else the only dmfs mount in /proc/mounts."
)]
struct Cli {
    /// The dmfs mount the dmsetup-style verbs act on.
    #[arg(long, global = true, value_name = "MNT")]
    mount: Option<PathBuf>,
    /// Show progress of long work on stderr (large tables; a snapshot merge started by
    /// resume is followed to its end); the default when stderr is a terminal.
    #[arg(long, global = true)]
    progress: bool,
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
        /// Let this group (a name or a gid) create devices and write ctl/ (needs --allow-other).
        /// Its members manage the devices they create; their tables may only name files they
        /// could open themselves.
        #[arg(long, value_name = "GROUP", requires = "allow_other", value_parser = access::parse_group)]
        ctl_group: Option<u32>,
        /// Log level: error, warn, info, debug, trace.
        #[arg(long, default_value = "info")]
        log_level: log::LevelFilter,
        /// Append the log to this file (default: stderr with -f, none in the background).
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// Request threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// FUSE passthrough (the kernel reads the backing file itself) for read-only opens of
        /// devices that are one linear line over a whole file: auto for read-only devices,
        /// on for every read-only open, off never.
        #[arg(long, value_enum, default_value = "auto")]
        passthrough: fs::PassthroughMode,
        /// Mirror every device into the kernel's device mapper as /dev/mapper/NAME (needs root
        /// and /dev/mapper/control; regular files are attached through loop devices).
        #[arg(long)]
        kernel: bool,
        /// How dev/ files use the kernel's page cache: page-cache caches reads through
        /// read-only opens (writes go straight to the backing files, and every device showing
        /// the written bytes drops its cached copy first); direct caches nothing; writeback
        /// also caches writes, which reach the backing files later (at the latest on fsync).
        #[arg(long, value_enum, default_value = "page-cache")]
        cache: coherence::CacheMode,
        /// Read-ahead of the mount in KiB (the read_ahead_kb of its bdi); 0 keeps the kernel's.
        #[arg(long, default_value_t = 1024, value_name = "KIB")]
        read_ahead_kb: u32,
    },
    /// Unmount a dmfs mount (same as umount MNT).
    Umount { mountpoint: PathBuf },
    /// Create a device from a table (from FILE, --table, or standard input).
    Create {
        name: String,
        file: Option<PathBuf>,
        /// Set the device's uuid.
        #[arg(short = 'u', long)]
        uuid: Option<String>,
        /// Create the device read-only (backing files are opened read-only).
        #[arg(short = 'r', long)]
        readonly: bool,
        /// The table itself; ';' separates lines.
        #[arg(long)]
        table: Option<String>,
    },
    /// Load a table as a device's inactive table (made live by resume).
    Reload {
        name: String,
        file: Option<PathBuf>,
        #[arg(long)]
        table: Option<String>,
    },
    /// Remove devices; -f first replaces the table with one that fails all I/O.
    Remove {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Suspend devices: in-flight I/O drains, new I/O waits.
    Suspend {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Resume devices, swapping in a reloaded table (with --progress, a snapshot merge it
    /// starts is followed to its end).
    Resume {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Rename a device, or with --setuuid set its uuid (once, as the kernel allows).
    Rename {
        old: String,
        #[arg(required_unless_present = "setuuid")]
        new: Option<String>,
        #[arg(long, conflicts_with = "new")]
        setuuid: Option<String>,
    },
    /// Send a message to the target at SECTOR.
    Message {
        name: String,
        sector: String,
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        message: Vec<String>,
    },
    /// Print a device's table (all devices without NAME).
    Table {
        name: Option<String>,
        /// The inactive table.
        #[arg(long)]
        inactive: bool,
        /// Show crypt keys (masked with zeros otherwise, as dmsetup does).
        #[arg(long)]
        showkeys: bool,
    },
    /// Print a device's status (all devices without NAME).
    Status { name: Option<String> },
    /// Print a device's info (all devices without NAME).
    Info {
        name: Option<String>,
        /// One row per device, in columns.
        #[arg(short = 'c', long)]
        columns: bool,
    },
    /// Print the devices a device maps onto.
    Deps { name: Option<String> },
    /// List the devices.
    Ls {
        /// Show devices with what they map onto below them.
        #[arg(long)]
        tree: bool,
    },
    /// List the target types and their versions.
    Targets,
    /// Print the dmfs version and the device-mapper interface version it mirrors.
    Version,
    /// Open a LUKS1, LUKS2 or plain dm-crypt volume as NAME, as `cryptsetup open
    /// --disable-keyring` does: the passphrase from the terminal (no echo), standard input
    /// (up to a newline) or --key-file; the device gets the crypt table and uuid cryptsetup
    /// would give the kernel. Exits 2 when no key slot takes the passphrase.
    Open {
        device: PathBuf,
        name: String,
        /// luks (either version), luks1, luks2 or plain.
        #[arg(
            long = "type",
            short = 'M',
            value_name = "TYPE",
            default_value = "luks"
        )]
        kind: String,
        #[command(flatten)]
        key: KeyArgs,
        /// A detached LUKS header.
        #[arg(long)]
        header: Option<PathBuf>,
        /// Create the device read-only.
        #[arg(short = 'r', long)]
        readonly: bool,
        /// Pass discards down (the table's allow_discards).
        #[arg(long)]
        allow_discards: bool,
        /// plain: the cipher (cryptsetup's default aes-cbc-essiv:sha256).
        #[arg(short = 'c', long, default_value = "aes-cbc-essiv:sha256")]
        cipher: String,
        /// plain: the key size in bits.
        #[arg(short = 's', long, default_value_t = 256, value_name = "BITS")]
        key_size: u32,
        /// plain: the passphrase hash, `hash[:bytes]` or `plain` (default ripemd160).
        #[arg(long, default_value = "ripemd160")]
        hash: String,
        /// plain: where the data starts, in 512-byte sectors.
        #[arg(short = 'o', long, default_value_t = 0, value_name = "SECTORS")]
        offset: u64,
        /// plain: the IV of the first sector, in 512-byte sectors.
        #[arg(short = 'p', long, default_value_t = 0, value_name = "SECTORS")]
        skip: u64,
        /// plain: the size in 512-byte sectors (default: to the device's end).
        #[arg(short = 'b', long, value_name = "SECTORS")]
        size: Option<u64>,
        /// plain: the encryption sector size in bytes.
        #[arg(long, default_value_t = 512, value_name = "BYTES")]
        sector_size: u32,
        /// plain: IVs count sectors of --sector-size, not of 512 bytes.
        #[arg(long)]
        iv_large_sectors: bool,
    },
    /// Remove a device made by `open` (a crypt device).
    Close { name: String },
    /// Create a device for every partition of each image (as kpartx -a) and every logical
    /// volume of the volume groups found on them (as vgchange -ay); all or nothing per image.
    Activate {
        /// Make every device read-only (images are opened read-only).
        #[arg(short = 'r', long)]
        readonly: bool,
        /// Map the partitions only, not the logical volumes.
        #[arg(long)]
        partitions_only: bool,
        /// The key of the LUKS volumes found (else a passphrase per volume, from the terminal
        /// or standard input).
        #[command(flatten)]
        key: KeyArgs,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Remove what activate made (as vgchange -an and kpartx -d): every device mapping an
    /// image (an argument with a '/', or a file), a device by name, or a volume group's LVs,
    /// with everything stacked on them, holders first; all or nothing.
    Deactivate {
        /// Open devices get a table that fails all I/O (as remove -f) and stay; the rest go.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true, value_name = "IMG|VG|NAME")]
        args: Vec<String>,
    },
}

/// Runs a dmsetup-style verb; on failure prints dmsetup's "Command failed." and exits 1.
/// Where a LUKS or plain volume's key comes from, as cryptsetup's options give it.
#[derive(clap::Args, Debug)]
struct KeyArgs {
    /// Read the key from this file ("-": all of standard input).
    #[arg(short = 'd', long)]
    key_file: Option<PathBuf>,
    /// Skip this many bytes of the key file (or of standard input).
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    keyfile_offset: u64,
    /// Read at most this many bytes of the key file.
    #[arg(short = 'l', long, default_value_t = 0, value_name = "BYTES")]
    keyfile_size: usize,
}

fn run_verb(mount: Option<PathBuf>, progress: bool, verb: Verb) {
    let result = cli::find_mount(mount).and_then(|root| {
        let m = cli::Mount::new(root, progress);
        let out = &mut std::io::stdout();
        match verb {
            Verb::Create {
                name,
                file,
                uuid,
                readonly,
                table,
            } => m.create(
                &name,
                &cli::read_table(table, file)?,
                uuid.as_deref(),
                readonly,
            ),
            Verb::Reload { name, file, table } => m.reload(&name, &cli::read_table(table, file)?),
            Verb::Remove { force, names } => names.iter().try_for_each(|n| m.remove(n, force)),
            Verb::Suspend { names } => names.iter().try_for_each(|n| m.simple("suspend", n)),
            Verb::Resume { names } => names.iter().try_for_each(|n| m.resume(n)),
            Verb::Rename { old, new, setuuid } => match (new, setuuid) {
                (_, Some(uuid)) => m.set_uuid(&old, &uuid),
                (Some(new), None) => m.rename(&old, &new),
                (None, None) => unreachable!("clap requires one"),
            },
            Verb::Message {
                name,
                sector,
                message,
            } => m.message(&name, &sector, &message),
            Verb::Table {
                name,
                inactive,
                showkeys,
            } => m.table(name.as_deref(), inactive, showkeys, out),
            Verb::Status { name } => m.report("status", name.as_deref(), out),
            Verb::Info {
                name,
                columns: true,
            } => m.info_columns(name.as_deref(), out),
            Verb::Info {
                name,
                columns: false,
            } => m.report("info", name.as_deref(), out),
            Verb::Deps { name } => m.report("deps", name.as_deref(), out),
            Verb::Ls { tree: true } => m.ls_tree(out),
            Verb::Ls { tree: false } => m.ls(out),
            Verb::Targets => m.cat("ctl/targets", out),
            Verb::Version => m.cat("ctl/version", out),
            Verb::Deactivate { force, args } => m.deactivate(&args, force, out),
            Verb::Mount { .. }
            | Verb::Umount { .. }
            | Verb::Open { .. }
            | Verb::Close { .. }
            | Verb::Activate { .. } => unreachable!("handled in main"),
        }
    });
    if let Err(cli::Failed(msg)) = result {
        eprintln!("{}", msg.trim_end());
        eprintln!("Command failed.");
        std::process::exit(1);
    }
}

/// Runs `open` or `close`; on failure prints the line and exits with cryptsetup's status.
fn run_crypt(
    mount: Option<PathBuf>,
    verb: impl FnOnce(&cli::Mount) -> Result<(), cli::OpenFailed>,
) {
    let result = cli::find_mount(mount)
        .map_err(|cli::Failed(m)| cli::OpenFailed(1, m))
        .and_then(|root| verb(&cli::Mount::new(root, false)));
    if let Err(cli::OpenFailed(code, msg)) = result {
        eprintln!("{}", msg.trim_end());
        std::process::exit(code);
    }
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Verb::Mount {
            mountpoint,
            foreground,
            allow_other,
            ctl_group,
            log_level,
            log_file,
            threads,
            passthrough,
            kernel,
            cache,
            read_ahead_kb,
        } => {
            daemon::mount(daemon::MountOptions {
                kernel,
                cache,
                read_ahead_kb,
                mountpoint,
                foreground,
                allow_other,
                ctl_group,
                log_level,
                log_file,
                threads,
                passthrough,
            });
        }
        Verb::Umount { mountpoint } => {
            if let Err(e) = daemon::umount(&mountpoint) {
                eprintln!("dmfs: {e}");
                std::process::exit(1);
            }
        }
        Verb::Open {
            device,
            name,
            kind,
            key,
            header,
            readonly,
            allow_discards,
            cipher,
            key_size,
            hash,
            offset,
            skip,
            size,
            sector_size,
            iv_large_sectors,
        } => {
            let request = cli::OpenRequest {
                kind: Some(kind),
                device,
                name,
                key_file: key.key_file,
                keyfile_offset: key.keyfile_offset,
                keyfile_size: key.keyfile_size,
                header,
                read_only: readonly,
                allow_discards,
                plain: dmfs::activate::luks::PlainParams {
                    cipher,
                    key_bits: key_size,
                    hash: Some(hash),
                    offset,
                    skip,
                    size,
                    sector_size,
                    iv_large_sectors,
                },
            };
            run_crypt(cli.mount, |m| m.open(&request));
        }
        Verb::Close { name } => run_crypt(cli.mount, |m| m.close(&name)),
        Verb::Activate {
            readonly,
            partitions_only,
            images,
            key,
        } => {
            let unlock = cli::OpenRequest {
                key_file: key.key_file,
                keyfile_offset: key.keyfile_offset,
                keyfile_size: key.keyfile_size,
                ..Default::default()
            };
            run_crypt(cli.mount, |m| {
                m.activate(
                    &images,
                    readonly,
                    partitions_only,
                    &unlock,
                    &mut std::io::stdout(),
                )
            });
        }
        verb => {
            // SAFETY: isatty only inspects the descriptor.
            let tty = unsafe { libc::isatty(2) } == 1;
            run_verb(cli.mount, cli.progress || tty, verb)
        }
    }
}
