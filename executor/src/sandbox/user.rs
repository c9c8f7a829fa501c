//! `service(user=)`: resolving a user (and group) name to the ids a service runs as.
//!
//! Names are looked up here, on the host that runs the service, so a typo is an error
//! that names the service before anything starts; the shim is handed numbers only.

use std::ffi::{CStr, CString};

/// The ids a service switches to before exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's groups in /etc/group).
    pub groups: Vec<u32>,
}

impl Ids {
    /// The shim's `--user` value: `uid:gid[:g1,g2,...]`.
    pub fn to_arg(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
        if groups.is_empty() {
            format!("{}:{}", self.uid, self.gid)
        } else {
            format!("{}:{}:{}", self.uid, self.gid, groups.join(","))
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("no user {0:?} on this host")]
    NoUser(String),
    #[error("no group {0:?} on this host")]
    NoGroup(String),
    #[error("{0:?} is not a user name or number")]
    Invalid(String),
    #[error("running as another user needs faultbox to run as root")]
    NotRoot,
}

/// Resolves `user` (`name`, `uid`, `name:group`, `uid:gid`). A user without an
/// explicit group gets its primary group from /etc/passwd (or its uid's number when
/// given as an unknown uid), and its supplementary groups.
pub fn resolve(user: &str) -> Result<Ids, UserError> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(UserError::NotRoot);
    }
    let (name, group) = match user.split_once(':') {
        Some((n, g)) => (n, Some(g)),
        None => (user, None),
    };
    if name.is_empty() || name.contains('\0') || group.is_some_and(|g| g.is_empty()) {
        return Err(UserError::Invalid(user.to_string()));
    }
    let entry = match name.parse::<u32>() {
        Ok(uid) => passwd_by_uid(uid).or(Some((uid, uid, None))),
        Err(_) => passwd_by_name(name),
    };
    let Some((uid, primary, pw_name)) = entry else {
        return Err(UserError::NoUser(name.to_string()));
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_by_name(g).ok_or_else(|| UserError::NoGroup(g.to_string()))?,
        },
    };
    let groups = match &pw_name {
        Some(n) => group_list(n, gid),
        None => Vec::new(),
    };
    Ok(Ids { uid, gid, groups })
}

/// (uid, primary gid, name) of a user name.
fn passwd_by_name(name: &str) -> Option<(u32, u32, Option<CString>)> {
    let c = CString::new(name).ok()?;
    lookup_passwd(|pw, buf, out| {
        // SAFETY: valid name, passwd struct, buffer and result pointers.
        unsafe { libc::getpwnam_r(c.as_ptr(), pw, buf.as_mut_ptr(), buf.len(), out) }
    })
}

/// (uid, primary gid, name) of a uid.
fn passwd_by_uid(uid: u32) -> Option<(u32, u32, Option<CString>)> {
    lookup_passwd(|pw, buf, out| {
        // SAFETY: valid passwd struct, buffer and result pointers.
        unsafe { libc::getpwuid_r(uid, pw, buf.as_mut_ptr(), buf.len(), out) }
    })
}

fn lookup_passwd(
    call: impl Fn(*mut libc::passwd, &mut [libc::c_char], *mut *mut libc::passwd) -> libc::c_int,
) -> Option<(u32, u32, Option<CString>)> {
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: passwd is plain old data; getpw*_r fills it.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = call(&mut pw, &mut buf, &mut out);
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || out.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points into `buf`, NUL-terminated.
        let name = unsafe { CStr::from_ptr(pw.pw_name) }.to_owned();
        return Some((pw.pw_uid, pw.pw_gid, Some(name)));
    }
}

fn group_by_name(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: group is plain old data; getgrnam_r fills it.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        // SAFETY: valid name, group struct, buffer and result pointers.
        let rc =
            unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || out.is_null() {
            return None;
        }
        return Some(gr.gr_gid);
    }
}

/// The groups `name` belongs to, `gid` included.
fn group_list(name: &CStr, gid: u32) -> Vec<u32> {
    let mut n: libc::c_int = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many
        // and sets `n` to the number it needs.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n as usize);
            return groups;
        }
        if n as usize <= groups.len() || n > 65536 {
            return vec![gid];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_and_numbers() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert_eq!(resolve("root"), Err(UserError::NotRoot));
            return;
        }
        let root = resolve("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        let nobody = resolve("nobody").unwrap();
        assert_eq!(resolve(&nobody.uid.to_string()).unwrap(), nobody);
        let explicit = resolve("nobody:0").unwrap();
        assert_eq!((explicit.uid, explicit.gid), (nobody.uid, 0));
        // An id without an entry is taken as given.
        assert_eq!(
            resolve("54321").unwrap(),
            Ids {
                uid: 54321,
                gid: 54321,
                groups: vec![]
            }
        );
        assert_eq!(resolve("54321:7").unwrap().gid, 7);
        assert_eq!(
            resolve("no-such-user-here"),
            Err(UserError::NoUser("no-such-user-here".into()))
        );
        assert_eq!(
            resolve("root:no-such-group-here"),
            Err(UserError::NoGroup("no-such-group-here".into()))
        );
        assert_eq!(resolve(":0"), Err(UserError::Invalid(":0".into())));
        assert_eq!(resolve("root:"), Err(UserError::Invalid("root:".into())));
        assert_eq!(root.to_arg().split(':').count(), 3);
    }
}
