//! What a cell's AppContainer is made of, decided without a system call: its profile name,
//! its capabilities, the directories it owns and the files it may read (with the access
//! each gets), and the environment the cell starts with. `appcontainer.rs` makes the calls
//! on Windows; this is tested anywhere.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

// Values as winnt.h and accctrl.h document them; `appcontainer.rs` asserts at compile time
// that windows-sys agrees.

/// `FILE_ALL_ACCESS`: what a cell holds on its own home and tmp.
pub const FILE_ALL_ACCESS: u32 = 0x001F_01FF;
/// `FILE_GENERIC_READ`.
pub const FILE_GENERIC_READ: u32 = 0x0012_0089;
/// `FILE_GENERIC_EXECUTE`.
pub const FILE_GENERIC_EXECUTE: u32 = 0x0012_00A0;
/// `OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE`: what is granted on a directory holds for
/// everything in it, now and later.
pub const SUB_CONTAINERS_AND_OBJECTS_INHERIT: u32 = 0x3;
/// `NO_INHERITANCE`: for a file, which has nothing to pass a grant on to.
pub const NO_INHERITANCE: u32 = 0x0;
/// `SECURITY_MANDATORY_LOW_RID`: the integrity level every AppContainer token has.
pub const SECURITY_MANDATORY_LOW_RID: u32 = 0x1000;

/// The prefix of the variables that carry the Cell's environment, as the Linux sandbox
/// takes them (cell-runtime/src/process/sandbox.rs `CELL_ENV_PREFIX`).
pub const CELL_ENV_PREFIX: &str = "CELLBUS_CELL_ENV_";

/// A capability SID an AppContainer token may hold. Without any, the token opens no
/// socket to anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Outbound connections to the internet.
    InternetClient,
    /// Outbound and inbound connections on private networks (the cluster's, the LAN's),
    /// which `internetClient` does not reach.
    PrivateNetworkClientServer,
}

impl Capability {
    /// The `WELL_KNOWN_SID_TYPE` `CreateWellKnownSid` makes its SID from.
    pub const fn well_known_sid_type(self) -> i32 {
        match self {
            Capability::InternetClient => 85,
            Capability::PrivateNetworkClientServer => 87,
        }
    }

    /// Its name in an app manifest.
    pub const fn name(self) -> &'static str {
        match self {
            Capability::InternetClient => "internetClient",
            Capability::PrivateNetworkClientServer => "privateNetworkClientServer",
        }
    }
}

/// The capabilities of a cell's token. A Cell's network grant (`egress`) is "outbound TCP
/// and UDP to anywhere": the internet needs `internetClient`, the cluster's own addresses
/// `privateNetworkClientServer`. `internetClientServer` (inbound from the internet) is
/// never granted: a cell serves through the bus. Loopback stays closed either way: an
/// AppContainer reaches 127.0.0.1 only with a loopback exemption, which nothing here sets.
pub fn capabilities(network: bool) -> &'static [Capability] {
    if network {
        &[
            Capability::InternetClient,
            Capability::PrivateNetworkClientServer,
        ]
    } else {
        &[]
    }
}

/// One cell's confinement, from the flags the runtime passes (the same as on Linux).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// A number unique to the cell within its runtime.
    pub uid: u32,
    /// The runtime's directory of cell directories.
    pub cells_dir: PathBuf,
    /// Files (or directories) the cell may read and run.
    pub readable: Vec<PathBuf>,
    /// Whether the Cell grants the network.
    pub network: bool,
}

impl Confinement {
    /// The cell's AppContainer profile: the uid, and a hash of the cells directory, so two
    /// runtimes of one Windows user never give their cells of the same uid one SID (and
    /// so each other's files). 32 characters at most, of the `[-_. A-Za-z0-9]` that
    /// profile names may hold, within their 64.
    pub fn profile_name(&self) -> String {
        format!(
            "cellbus.cell.{}.{:08x}",
            self.uid,
            fnv1a(&normalized(&self.cells_dir))
        )
    }

    /// The cell's directory, `{cells_dir}\{uid}`.
    pub fn cell_dir(&self) -> PathBuf {
        join(&self.cells_dir, &self.uid.to_string())
    }

    /// The cell's home: its working directory, and HOME and USERPROFILE.
    pub fn home(&self) -> PathBuf {
        join(&self.cell_dir(), "home")
    }

    /// The cell's tmp: TMP, TEMP and TMPDIR.
    pub fn tmp(&self) -> PathBuf {
        join(&self.cell_dir(), "tmp")
    }

    /// What the cell's AppContainer SID is granted, in order: full control of its home and
    /// tmp (and what they will hold), then read and execute on each readable path (and,
    /// for a directory, on what it holds). `is_dir` says which readable paths are
    /// directories.
    pub fn grants(&self, is_dir: impl Fn(&Path) -> bool) -> Vec<Grant> {
        let own = [self.home(), self.tmp()].into_iter().map(|path| Grant {
            path,
            access: FILE_ALL_ACCESS,
            inheritance: SUB_CONTAINERS_AND_OBJECTS_INHERIT,
        });
        let readable = self.readable.iter().map(|path| Grant {
            path: path.clone(),
            access: FILE_GENERIC_READ | FILE_GENERIC_EXECUTE,
            inheritance: if is_dir(path) {
                SUB_CONTAINERS_AND_OBJECTS_INHERIT
            } else {
                NO_INHERITANCE
            },
        });
        own.chain(readable).collect()
    }

    /// The cell's environment: `own` (the sandbox's variables, which the runtime fills
    /// with the Cell's), where `CELLBUS_CELL_ENV_NAME` is taken as `NAME` and wins over a
    /// plain `NAME`; then HOME and USERPROFILE set to the home, TMP, TEMP and TMPDIR to
    /// the tmp. Names are compared as Windows does, ignoring case, and the list is sorted
    /// the way an environment block must be.
    pub fn environment(
        &self,
        own: impl IntoIterator<Item = (String, String)>,
    ) -> Vec<(String, String)> {
        let mut plain = Vec::new();
        let mut prefixed = Vec::new();
        for (name, value) in own {
            match name.strip_prefix(CELL_ENV_PREFIX) {
                Some(stripped) if !stripped.is_empty() => {
                    prefixed.push((stripped.to_owned(), value))
                }
                _ => plain.push((name, value)),
            }
        }
        let home = self.home().display().to_string();
        let tmp = self.tmp().display().to_string();
        let dirs = [
            ("HOME", &home),
            ("USERPROFILE", &home),
            ("TMP", &tmp),
            ("TEMP", &tmp),
            ("TMPDIR", &tmp),
        ]
        .map(|(name, value)| (name.to_owned(), value.clone()));
        let mut environment: Vec<(String, String)> = Vec::new();
        // Later sources win.
        for (name, value) in plain.into_iter().chain(prefixed).chain(dirs) {
            let key = name.to_uppercase();
            environment.retain(|(existing, _)| existing.to_uppercase() != key);
            environment.push((name, value));
        }
        environment.sort_by_key(|(name, _)| name.to_uppercase());
        environment
    }
}

/// Access granted to the AppContainer SID on one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub path: PathBuf,
    pub access: u32,
    pub inheritance: u32,
}

/// `CreateProcessW`'s environment block: `NAME=value` strings in UTF-16, each ending in a
/// NUL, and one more NUL after the last (two for an empty environment, as Windows asks).
pub fn environment_block(environment: &[(String, String)]) -> Vec<u16> {
    let mut block: Vec<u16> = environment
        .iter()
        .flat_map(|(name, value)| {
            format!("{name}={value}")
                .encode_utf16()
                .chain(std::iter::once(0))
                .collect::<Vec<u16>>()
        })
        .collect();
    if block.is_empty() {
        block.push(0);
    }
    block.push(0);
    block
}

/// `dir\name`, joined by hand: these are Windows paths even where the tests run on Linux.
fn join(dir: &Path, name: &str) -> PathBuf {
    let dir = dir.display().to_string();
    let dir = dir.trim_end_matches(['\\', '/']);
    PathBuf::from(format!("{dir}\\{name}"))
}

/// The cells directory as Windows tells paths apart: case and separators aside.
fn normalized(dir: &Path) -> String {
    let dir = dir.display().to_string().replace('/', "\\").to_lowercase();
    dir.trim_end_matches('\\').to_owned()
}

/// 32-bit FNV-1a: short, stable across Rust versions (unlike `DefaultHasher`), and no
/// secret to keep: it only keeps runtimes apart.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(uid: u32, cells_dir: &str) -> Confinement {
        Confinement {
            uid,
            cells_dir: PathBuf::from(cells_dir),
            readable: Vec::new(),
            network: false,
        }
    }

    #[test]
    fn profile_names_follow_the_uid_and_tell_runtimes_apart() {
        let name = cell(1007, r"C:\cellbus\cells").profile_name();
        assert!(name.starts_with("cellbus.cell.1007."), "{name}");
        assert_eq!(name.len(), "cellbus.cell.1007.".len() + 8);
        // The same directory, however it is spelt, is the same runtime.
        for spelling in [
            r"c:\CELLBUS\cells",
            r"C:\cellbus\cells\",
            "C:/cellbus/cells",
        ] {
            assert_eq!(cell(1007, spelling).profile_name(), name, "{spelling}");
        }
        assert_ne!(cell(1008, r"C:\cellbus\cells").profile_name(), name);
        assert_ne!(cell(1007, r"D:\other\cells").profile_name(), name);
        // The longest fits Windows' 64 characters and its alphabet.
        let longest = cell(u32::MAX, r"C:\x").profile_name();
        assert!(longest.len() <= 64, "{longest}");
        assert!(longest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_. ".contains(c)));
    }

    #[test]
    fn fnv1a_has_its_published_values() {
        // From the reference test vectors of FNV-1a 32.
        assert_eq!(fnv1a(""), 0x811c_9dc5);
        assert_eq!(fnv1a("a"), 0xe40c_292c);
        assert_eq!(fnv1a("foobar"), 0xbf9c_f968);
    }

    #[test]
    fn only_a_cell_granted_the_network_holds_network_capabilities() {
        assert_eq!(capabilities(false), &[]);
        assert_eq!(
            capabilities(true),
            &[
                Capability::InternetClient,
                Capability::PrivateNetworkClientServer
            ]
        );
        let cases = [
            (Capability::InternetClient, 85, "internetClient"),
            (
                Capability::PrivateNetworkClientServer,
                87,
                "privateNetworkClientServer",
            ),
        ];
        for (capability, sid_type, name) in cases {
            assert_eq!(capability.well_known_sid_type(), sid_type);
            assert_eq!(capability.name(), name);
        }
    }

    #[test]
    fn a_cell_owns_its_home_and_tmp_and_reads_what_it_is_given() {
        let confinement = Confinement {
            readable: vec![
                PathBuf::from(r"C:\cellbus\executables\sha256-ab"),
                PathBuf::from(r"C:\cellbus\sdk"),
            ],
            ..cell(7, r"C:\cellbus\cells\")
        };
        assert_eq!(
            confinement.home(),
            PathBuf::from(r"C:\cellbus\cells\7\home")
        );
        assert_eq!(confinement.tmp(), PathBuf::from(r"C:\cellbus\cells\7\tmp"));
        let grants = confinement.grants(|path| path.to_string_lossy().ends_with("sdk"));
        let read_execute = 0x0012_00A9;
        let expected = [
            (r"C:\cellbus\cells\7\home", 0x001F_01FF, 3),
            (r"C:\cellbus\cells\7\tmp", 0x001F_01FF, 3),
            (r"C:\cellbus\executables\sha256-ab", read_execute, 0),
            (r"C:\cellbus\sdk", read_execute, 3),
        ]
        .map(|(path, access, inheritance)| Grant {
            path: PathBuf::from(path),
            access,
            inheritance,
        });
        assert_eq!(grants, expected);
        assert_eq!(FILE_GENERIC_READ | FILE_GENERIC_EXECUTE, read_execute);
    }

    #[test]
    fn the_environment_is_the_cells_with_its_own_home_and_tmp() {
        let own = [
            ("Path", r"C:\Windows"),
            ("SystemRoot", r"C:\Windows"),
            ("CELLBUS_CELL_ENV_GREETING", "hello"),
            ("GREETING", "overridden by the prefixed one"),
            ("CELLBUS_CELL_ENV_PATH", r"C:\Python;C:\Windows"),
            ("home", r"C:\Users\runtime"),
            ("TEMP", r"C:\Users\runtime\AppData\Local\Temp"),
            ("CELLBUS_CELL_ENV_", "a bare prefix is not a name"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()));
        let environment = cell(7, r"C:\cells").environment(own);
        let expected = [
            ("CELLBUS_CELL_ENV_", "a bare prefix is not a name"),
            ("GREETING", "hello"),
            ("HOME", r"C:\cells\7\home"),
            ("PATH", r"C:\Python;C:\Windows"),
            ("SystemRoot", r"C:\Windows"),
            ("TEMP", r"C:\cells\7\tmp"),
            ("TMP", r"C:\cells\7\tmp"),
            ("TMPDIR", r"C:\cells\7\tmp"),
            ("USERPROFILE", r"C:\cells\7\home"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()));
        assert_eq!(environment, expected);
    }

    #[test]
    fn the_environment_block_is_nul_separated_utf16_ending_in_two_nuls() {
        let environment =
            [("A", "1"), ("B", "ü")].map(|(name, value)| (name.to_owned(), value.to_owned()));
        let block = environment_block(&environment);
        let expected: Vec<u16> = "A=1\0B=ü\0\0".encode_utf16().collect();
        assert_eq!(block, expected);
        assert_eq!(environment_block(&[]), [0, 0]);
    }
}
