//! The system calls of a cell's AppContainer: its profile (created, or found when it
//! exists), the capability SIDs of its token, its directories and the access its SID is
//! granted on them and on the files it reads, and what a process learns of its own token.
//! [`Job::spawn_cell`](crate::Job::spawn_cell) starts a process in it.
//!
//! `CreateAppContainerProfile` and `DeriveAppContainerSidFromAppContainerName` are looked
//! up when first needed rather than imported: a Windows without them (Wine has neither)
//! then still loads `cellbus-sandbox.exe`, which refuses to run the cell and says why,
//! instead of failing to start with a loader error no one can read.

use std::ffi::c_void;
use std::fmt;
use std::io;
use std::mem::{size_of, transmute};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};

use windows_sys::core::{HRESULT, PCWSTR, PWSTR};
use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, LocalFree, ERROR_ALREADY_EXISTS, ERROR_SUCCESS, HANDLE,
};
use windows_sys::Win32::Security::Authorization as authz;
use windows_sys::Win32::Security::{self as sec, PSID, SID_AND_ATTRIBUTES};
use windows_sys::Win32::Storage::FileSystem as fs;
use windows_sys::Win32::System::LibraryLoader::{
    GetProcAddress, LoadLibraryExW, LOAD_LIBRARY_SEARCH_SYSTEM32,
};
use windows_sys::Win32::System::SystemServices as ss;
use windows_sys::Win32::System::Threading as th;

use crate::container::{self, capabilities, Capability, Confinement, Grant};

// The neutral module's constants are the ones Windows reads.
const _: () = assert!(container::FILE_ALL_ACCESS == fs::FILE_ALL_ACCESS);
const _: () = assert!(container::FILE_GENERIC_READ == fs::FILE_GENERIC_READ);
const _: () = assert!(container::FILE_GENERIC_EXECUTE == fs::FILE_GENERIC_EXECUTE);
const _: () = assert!(
    container::SUB_CONTAINERS_AND_OBJECTS_INHERIT == sec::SUB_CONTAINERS_AND_OBJECTS_INHERIT
);
const _: () = assert!(container::NO_INHERITANCE == sec::NO_INHERITANCE);
const _: () =
    assert!(container::SECURITY_MANDATORY_LOW_RID == ss::SECURITY_MANDATORY_LOW_RID as u32);
const _: () = assert!(
    Capability::InternetClient.well_known_sid_type() == sec::WinCapabilityInternetClientSid
);
const _: () = assert!(
    Capability::PrivateNetworkClientServer.well_known_sid_type()
        == sec::WinCapabilityPrivateNetworkClientServerSid
);

/// `HRESULT_FROM_WIN32(ERROR_ALREADY_EXISTS)`: the profile was made by an earlier run.
const PROFILE_EXISTS: HRESULT = (0x8007_0000 | ERROR_ALREADY_EXISTS) as HRESULT;

type CreateProfile = unsafe extern "system" fn(
    name: PCWSTR,
    display_name: PCWSTR,
    description: PCWSTR,
    capabilities: *const SID_AND_ATTRIBUTES,
    capability_count: u32,
    sid: *mut PSID,
) -> HRESULT;
type DeriveSid = unsafe extern "system" fn(name: PCWSTR, sid: *mut PSID) -> HRESULT;

/// Why a cell's AppContainer could not be made ready.
#[derive(Debug)]
pub enum ContainerError {
    /// This Windows has no such function in userenv.dll (Wine; Windows before 8).
    Unsupported { function: &'static str, code: u32 },
    /// The profile could neither be created nor found.
    Profile {
        name: String,
        call: &'static str,
        hresult: HRESULT,
    },
    /// A capability's SID could not be made.
    CapabilitySid { capability: Capability, code: u32 },
    /// The cell's home or tmp could not be made.
    Directory { path: PathBuf, error: io::Error },
    /// Access could not be granted on a path.
    Grant {
        path: PathBuf,
        step: &'static str,
        code: u32,
    },
}

impl ContainerError {
    /// A short fixed name of what failed, for a failure counter's label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ContainerError::Unsupported { .. } => "appcontainer_unsupported",
            ContainerError::Profile { .. } => "appcontainer_profile",
            ContainerError::CapabilitySid { .. } => "capability_sid",
            ContainerError::Directory { .. } => "cell_directory",
            ContainerError::Grant { .. } => "grant",
        }
    }
}

impl fmt::Display for ContainerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let os = |code: u32| io::Error::from_raw_os_error(code as i32);
        match self {
            ContainerError::Unsupported { function, code } => write!(
                f,
                "this Windows cannot make AppContainers: userenv.dll has no {function} ({}); \
                 a process cell does not run without one",
                os(*code)
            ),
            ContainerError::Profile {
                name,
                call,
                hresult,
            } => write!(
                f,
                "{call} for the AppContainer profile `{name}` failed with HRESULT {:#010x}",
                *hresult as u32
            ),
            ContainerError::CapabilitySid { capability, code } => write!(
                f,
                "making the SID of the `{}` capability: {}",
                capability.name(),
                os(*code)
            ),
            ContainerError::Directory { path, error } => {
                write!(f, "making the cell's directory {}: {error}", path.display())
            }
            ContainerError::Grant { path, step, code } => write!(
                f,
                "granting the cell's AppContainer access to {} ({step}): {}; the runtime must \
                 be able to change the permissions of every path it hands a cell",
                path.display(),
                os(*code)
            ),
        }
    }
}

impl std::error::Error for ContainerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ContainerError::Directory { error, .. } => Some(error),
            _ => None,
        }
    }
}

fn last_error() -> u32 {
    // SAFETY: reads the calling thread's last-error value; no arguments.
    unsafe { GetLastError() }
}

/// One cell's AppContainer: its SID and the capability SIDs its processes' tokens get.
pub struct AppContainer {
    name: String,
    sid: PSID,
    /// Who allocated `sid`, and so how it is freed.
    allocated_by: Allocator,
    /// Each a SID of SECURITY_MAX_SID_SIZE bytes, pointed at by `attributes`.
    capability_sids: Vec<Vec<u8>>,
    attributes: Vec<SID_AND_ATTRIBUTES>,
}

impl AppContainer {
    /// The cell's AppContainer: its profile is created on the cell's first run and found
    /// on every later one; its token holds the capabilities of `confinement.network`.
    pub fn for_cell(confinement: &Confinement) -> Result<AppContainer, ContainerError> {
        let name = confinement.profile_name();
        let create: CreateProfile = {
            let found = userenv_function("CreateAppContainerProfile")?;
            // SAFETY: the function's documented signature, which `CreateProfile` spells.
            unsafe { transmute::<unsafe extern "system" fn() -> isize, CreateProfile>(found) }
        };
        let wide_name = wide(&name);
        let display = wide(&format!("Cellbus cell {}", confinement.uid));
        let description = wide("The AppContainer of one Cellbus process cell");
        let mut sid: PSID = null_mut();
        // SAFETY: NUL-terminated strings that outlive the call, no capabilities (they are
        // given to each process instead), and a valid out pointer.
        let created = unsafe {
            create(
                wide_name.as_ptr(),
                display.as_ptr(),
                description.as_ptr(),
                null(),
                0,
                &mut sid,
            )
        };
        if created == PROFILE_EXISTS {
            let derive: DeriveSid = {
                let found = userenv_function("DeriveAppContainerSidFromAppContainerName")?;
                // SAFETY: the function's documented signature, which `DeriveSid` spells.
                unsafe { transmute::<unsafe extern "system" fn() -> isize, DeriveSid>(found) }
            };
            // SAFETY: a NUL-terminated name that outlives the call and a valid out pointer.
            let derived = unsafe { derive(wide_name.as_ptr(), &mut sid) };
            if derived < 0 {
                return Err(ContainerError::Profile {
                    name,
                    call: "DeriveAppContainerSidFromAppContainerName",
                    hresult: derived,
                });
            }
        } else if created < 0 {
            return Err(ContainerError::Profile {
                name,
                call: "CreateAppContainerProfile",
                hresult: created,
            });
        }
        AppContainer::with_sid(name, sid, Allocator::Userenv, confinement.network)
    }

    /// An AppContainer of the SID `sid` (`S-1-15-2-…`), with no profile behind it. For the
    /// probe: Wine has no profiles, and this shows what it does with the other calls.
    pub fn unregistered(sid: &str, network: bool) -> Result<AppContainer, ContainerError> {
        let text = wide(sid);
        let mut converted: PSID = null_mut();
        // SAFETY: a NUL-terminated string and a valid out pointer.
        if unsafe { authz::ConvertStringSidToSidW(text.as_ptr(), &mut converted) } == 0 {
            return Err(ContainerError::Profile {
                name: sid.to_owned(),
                call: "ConvertStringSidToSidW",
                hresult: (0x8007_0000 | last_error()) as HRESULT,
            });
        }
        AppContainer::with_sid(sid.to_owned(), converted, Allocator::Local, network)
    }

    fn with_sid(
        name: String,
        sid: PSID,
        allocated_by: Allocator,
        network: bool,
    ) -> Result<AppContainer, ContainerError> {
        let mut container = AppContainer {
            name,
            sid,
            allocated_by,
            capability_sids: Vec::new(),
            attributes: Vec::new(),
        };
        for &capability in capabilities(network) {
            let mut buffer = vec![0u8; sec::SECURITY_MAX_SID_SIZE as usize];
            let mut size = buffer.len() as u32;
            // SAFETY: a documented SID type, no domain, and a buffer of the size given.
            let made = unsafe {
                sec::CreateWellKnownSid(
                    capability.well_known_sid_type(),
                    null_mut(),
                    buffer.as_mut_ptr() as PSID,
                    &mut size,
                )
            };
            if made == 0 {
                return Err(ContainerError::CapabilitySid {
                    capability,
                    code: last_error(),
                });
            }
            container.capability_sids.push(buffer);
        }
        container.attributes = container
            .capability_sids
            .iter_mut()
            .map(|sid| SID_AND_ATTRIBUTES {
                Sid: sid.as_mut_ptr() as PSID,
                Attributes: ss::SE_GROUP_ENABLED as u32,
            })
            .collect();
        Ok(container)
    }

    /// The profile's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes the cell's home and tmp and grants the AppContainer what
    /// [`Confinement::grants`] says, in that order; the first failure stops it.
    pub fn prepare(&self, confinement: &Confinement) -> Result<(), ContainerError> {
        for dir in [confinement.home(), confinement.tmp()] {
            std::fs::create_dir_all(&dir)
                .map_err(|error| ContainerError::Directory { path: dir, error })?;
        }
        for grant in confinement.grants(|path| path.is_dir()) {
            self.grant(&grant)?;
        }
        Ok(())
    }

    /// Adds an allow entry for the AppContainer's SID to the path's DACL (merged with one
    /// it already has), keeping every other entry.
    fn grant(&self, grant: &Grant) -> Result<(), ContainerError> {
        let failed = |step: &'static str, code: u32| ContainerError::Grant {
            path: grant.path.clone(),
            step,
            code,
        };
        let path = wide_path(&grant.path);
        let mut dacl: *mut sec::ACL = null_mut();
        let mut descriptor: sec::PSECURITY_DESCRIPTOR = null_mut();
        // SAFETY: a NUL-terminated path, out pointers for the DACL and the descriptor that
        // holds it, null for what is not asked.
        let read = unsafe {
            authz::GetNamedSecurityInfoW(
                path.as_ptr(),
                authz::SE_FILE_OBJECT,
                sec::DACL_SECURITY_INFORMATION,
                null_mut(),
                null_mut(),
                &mut dacl,
                null_mut(),
                &mut descriptor,
            )
        };
        if read != ERROR_SUCCESS {
            return Err(failed("reading its DACL", read));
        }
        let _descriptor = Local(descriptor);
        let entry = authz::EXPLICIT_ACCESS_W {
            grfAccessPermissions: grant.access,
            grfAccessMode: authz::GRANT_ACCESS,
            grfInheritance: grant.inheritance,
            Trustee: authz::TRUSTEE_W {
                pMultipleTrustee: null_mut(),
                MultipleTrusteeOperation: authz::NO_MULTIPLE_TRUSTEE,
                TrusteeForm: authz::TRUSTEE_IS_SID,
                TrusteeType: authz::TRUSTEE_IS_WELL_KNOWN_GROUP,
                ptstrName: self.sid as PWSTR,
            },
        };
        let mut merged: *mut sec::ACL = null_mut();
        // SAFETY: one valid entry whose SID outlives the call, the old DACL (inside the
        // descriptor, alive until `_descriptor` drops) or null, and a valid out pointer.
        let set = unsafe { authz::SetEntriesInAclW(1, &entry, dacl, &mut merged) };
        if set != ERROR_SUCCESS {
            return Err(failed("adding the entry", set));
        }
        let _merged = Local(merged as *mut c_void);
        // SAFETY: both ACLs are valid (the old one inside the live descriptor), each
        // `AclSize` bytes long.
        let unchanged = unsafe { same_acl(dacl, merged) };
        if unchanged {
            // Already granted by an earlier run: writing it again would walk everything
            // below a directory, the cell's whole home, on every start.
            return Ok(());
        }
        // SAFETY: a NUL-terminated path and a valid DACL; null for what is not set.
        let written = unsafe {
            authz::SetNamedSecurityInfoW(
                path.as_ptr(),
                authz::SE_FILE_OBJECT,
                sec::DACL_SECURITY_INFORMATION,
                null_mut(),
                null_mut(),
                merged,
                null(),
            )
        };
        if written != ERROR_SUCCESS {
            return Err(failed("writing its DACL", written));
        }
        Ok(())
    }

    /// The attribute `PROC_THREAD_ATTRIBUTE_SECURITY_CAPABILITIES` carries. It points into
    /// `self`, which must outlive the process creation that reads it.
    pub(crate) fn security_capabilities(&self) -> sec::SECURITY_CAPABILITIES {
        sec::SECURITY_CAPABILITIES {
            AppContainerSid: self.sid,
            // Windows only reads it.
            Capabilities: self.attributes.as_ptr() as *mut SID_AND_ATTRIBUTES,
            CapabilityCount: self.attributes.len() as u32,
            Reserved: 0,
        }
    }
}

enum Allocator {
    /// userenv: freed with FreeSid.
    Userenv,
    /// ConvertStringSidToSidW: freed with LocalFree.
    Local,
}

impl Drop for AppContainer {
    fn drop(&mut self) {
        match self.allocated_by {
            // SAFETY: the SID userenv allocated, freed once, here.
            Allocator::Userenv => unsafe {
                sec::FreeSid(self.sid);
            },
            Allocator::Local => drop(Local(self.sid)),
        }
    }
}

/// Whether two ACLs are byte for byte the same.
///
/// # Safety
/// Each pointer is null or a valid ACL.
unsafe fn same_acl(a: *const sec::ACL, b: *const sec::ACL) -> bool {
    if a.is_null() || b.is_null() {
        return false;
    }
    let size = usize::from((*a).AclSize);
    size == usize::from((*b).AclSize)
        && std::slice::from_raw_parts(a as *const u8, size)
            == std::slice::from_raw_parts(b as *const u8, size)
}

/// A LocalAlloc'd block, freed when dropped.
struct Local(*mut c_void);

impl Drop for Local {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: allocated by the call that returned it, freed once, here.
            unsafe { LocalFree(self.0) };
        }
    }
}

fn userenv_function(
    function: &'static str,
) -> Result<unsafe extern "system" fn() -> isize, ContainerError> {
    let library = wide("userenv.dll");
    // SAFETY: a NUL-terminated name; searched for in System32 only, so no planted DLL in
    // the working directory is loaded. The module stays loaded for the process's life.
    let module =
        unsafe { LoadLibraryExW(library.as_ptr(), null_mut(), LOAD_LIBRARY_SEARCH_SYSTEM32) };
    if module.is_null() {
        return Err(ContainerError::Unsupported {
            function,
            code: last_error(),
        });
    }
    let name: Vec<u8> = function.bytes().chain(std::iter::once(0)).collect();
    // SAFETY: a loaded module and a NUL-terminated ANSI name.
    match unsafe { GetProcAddress(module, name.as_ptr()) } {
        Some(found) => Ok(found),
        None => Err(ContainerError::Unsupported {
            function,
            code: last_error(),
        }),
    }
}

/// What the calling process's token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenFacts {
    /// TokenIsAppContainer.
    pub app_container: bool,
    /// The last subauthority of TokenIntegrityLevel's SID: 0x1000 is low, 0x2000 medium.
    pub integrity: u32,
}

/// A failed call while reading the calling process's token.
#[derive(Debug)]
pub struct TokenError {
    pub call: &'static str,
    pub code: u32,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.call,
            io::Error::from_raw_os_error(self.code as i32)
        )
    }
}

impl std::error::Error for TokenError {}

/// Whether the calling process runs in an AppContainer, and at which integrity level.
pub fn current_token() -> Result<TokenFacts, TokenError> {
    // SAFETY: the current process's pseudo-handle, always valid.
    token_of(unsafe { th::GetCurrentProcess() })
}

/// What the token of `process` (a handle with PROCESS_QUERY_LIMITED_INFORMATION) is.
pub(crate) fn token_of(process: HANDLE) -> Result<TokenFacts, TokenError> {
    let failed = |call| TokenError {
        call,
        code: last_error(),
    };
    let mut token: HANDLE = null_mut();
    // SAFETY: an open process handle and a valid out pointer.
    if unsafe { th::OpenProcessToken(process, sec::TOKEN_QUERY, &mut token) } == 0 {
        return Err(failed("OpenProcessToken"));
    }
    let token = TokenHandle(token);
    let mut is_app_container = 0u32;
    let mut length = 0u32;
    // SAFETY: TokenIsAppContainer fills a DWORD; the buffer is one, its size given.
    let read = unsafe {
        sec::GetTokenInformation(
            token.0,
            sec::TokenIsAppContainer,
            &mut is_app_container as *mut u32 as *mut c_void,
            size_of::<u32>() as u32,
            &mut length,
        )
    };
    if read == 0 {
        return Err(failed("GetTokenInformation(TokenIsAppContainer)"));
    }
    // A TOKEN_MANDATORY_LABEL and the SID it points to, in u64s for alignment.
    let mut label = [0u64; 16];
    // SAFETY: a buffer of the size given, aligned for TOKEN_MANDATORY_LABEL.
    let read = unsafe {
        sec::GetTokenInformation(
            token.0,
            sec::TokenIntegrityLevel,
            label.as_mut_ptr() as *mut c_void,
            size_of::<[u64; 16]>() as u32,
            &mut length,
        )
    };
    if read == 0 {
        return Err(failed("GetTokenInformation(TokenIntegrityLevel)"));
    }
    // SAFETY: Windows wrote a TOKEN_MANDATORY_LABEL at the start of the buffer, whose SID
    // points into the same buffer; a SID's last subauthority is at count - 1.
    let integrity = unsafe {
        let label = &*(label.as_ptr() as *const sec::TOKEN_MANDATORY_LABEL);
        let sid = label.Label.Sid;
        let count = *sec::GetSidSubAuthorityCount(sid);
        if count == 0 {
            0
        } else {
            *sec::GetSidSubAuthority(sid, u32::from(count) - 1)
        }
    };
    Ok(TokenFacts {
        app_container: is_app_container != 0,
        integrity,
    })
}

struct TokenHandle(HANDLE);

impl Drop for TokenHandle {
    fn drop(&mut self) {
        // SAFETY: opened by OpenProcessToken, closed once, here.
        unsafe { CloseHandle(self.0) };
    }
}

/// A `PROC_THREAD_ATTRIBUTE_LIST` holding one attribute, the security capabilities.
/// It points at `capabilities`, which must outlive it.
pub(crate) struct AttributeList {
    /// u64s, so the list is aligned as Windows expects.
    buffer: Vec<u64>,
}

impl AttributeList {
    pub(crate) fn security_capabilities(
        capabilities: &sec::SECURITY_CAPABILITIES,
    ) -> Result<AttributeList, u32> {
        let mut size = 0usize;
        // SAFETY: the documented size query: null list, one attribute, out size. It fails
        // with ERROR_INSUFFICIENT_BUFFER by design.
        unsafe { th::InitializeProcThreadAttributeList(null_mut(), 1, 0, &mut size) };
        if size == 0 {
            return Err(last_error());
        }
        let mut list = AttributeList {
            buffer: vec![0u64; (size + 7) / 8],
        };
        // SAFETY: a buffer at least `size` bytes long.
        if unsafe { th::InitializeProcThreadAttributeList(list.raw(), 1, 0, &mut size) } == 0 {
            // Not initialised: nothing to delete.
            let code = last_error();
            list.buffer.clear();
            return Err(code);
        }
        // SAFETY: an initialised list, the documented attribute with its struct and size;
        // Windows keeps the pointer, which the caller keeps alive.
        let updated = unsafe {
            th::UpdateProcThreadAttribute(
                list.raw(),
                0,
                th::PROC_THREAD_ATTRIBUTE_SECURITY_CAPABILITIES as usize,
                capabilities as *const sec::SECURITY_CAPABILITIES as *const c_void,
                size_of::<sec::SECURITY_CAPABILITIES>(),
                null_mut(),
                null(),
            )
        };
        if updated == 0 {
            return Err(last_error());
        }
        Ok(list)
    }

    pub(crate) fn raw(&mut self) -> th::LPPROC_THREAD_ATTRIBUTE_LIST {
        self.buffer.as_mut_ptr() as th::LPPROC_THREAD_ATTRIBUTE_LIST
    }
}

impl Drop for AttributeList {
    fn drop(&mut self) {
        if !self.buffer.is_empty() {
            // SAFETY: a list InitializeProcThreadAttributeList initialised, deleted once.
            unsafe { th::DeleteProcThreadAttributeList(self.raw()) };
        }
    }
}

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(std::iter::once(0)).collect()
}

/// A path as UTF-16. Every path here came from the command line as a `String`, so
/// nothing is lost in the conversion.
pub(crate) fn wide_path(path: &Path) -> Vec<u16> {
    wide(&path.to_string_lossy())
}
