//! Directory administration for integration tests: OUs, users in them, groups, the agent's
//! delegated service account, attribute changes, fine-grained password policies (PSOs) and real
//! lockouts on the throwaway Samba AD DC.
//!
//! Everything goes over LDAPS as the domain administrator, except the delegation, which runs the
//! shipped `deploy/ad/grant-rights-samba.sh` (so the tests exercise the script customers run)
//! against the DC's `sam.ldb`, or over `ldap://` when the tests do not run as root.
//!
//! Other test runs share the DC: every helper creates uniquely named objects and changes only
//! those, never a domain-wide setting. Nothing is deleted afterwards: the DC is thrown away. Each
//! helper panics with what went wrong, failing the test; no panic message holds a password.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use ldap3::controls::RawControl;
use ldap3::{Mod, Scope, SearchEntry};

use super::{TestDc, TestUser, nanos, repo_root};
use crate::secret::SecretString;

/// `msDS-User-Account-Control-Computed` bit of a locked-out account.
pub const UF_LOCKOUT: u32 = 0x10;
/// `userAccountControl` bit of a disabled account.
pub const UF_ACCOUNTDISABLE: u32 = 0x2;
/// `userAccountControl` of an enabled normal account.
pub const UF_NORMAL_ACCOUNT: u32 = 0x200;
/// `userAccountControl` bit "password never expires".
pub const UF_DONT_EXPIRE_PASSWD: u32 = 0x10000;

/// The PSO precedence [`TestDc::lock_out`] uses: lower than [`PSO_PRECEDENCE`], so it wins.
const LOCKOUT_PSO_PRECEDENCE: u32 = 1;
/// The PSO precedence [`TestDc::create_pso`] uses.
pub const PSO_PRECEDENCE: u32 = 10;
/// 42 days in AD's negative 100 ns units (the default maximum password age).
const MAX_PASSWORD_AGE: &str = "-36288000000000";
/// 30 minutes in AD's negative 100 ns units.
const THIRTY_MINUTES: &str = "-18000000000";
/// LDAP_SERVER_SD_FLAGS_OID with DACL_SECURITY_INFORMATION (4): read/write only the DACL.
const SD_FLAGS_OID: &str = "1.2.840.113556.1.4.801";
const SD_FLAGS_DACL: [u8; 5] = [0x30, 0x03, 0x02, 0x01, 0x04];
/// SE_DACL_PROTECTED in the control word of a self-relative security descriptor.
const SE_DACL_PROTECTED: u16 = 0x1000;

/// A name part no other object on the shared DC has: `<prefix><counter>p<pid><time>`, cut to
/// `max` characters (sAMAccountName allows 20).
fn unique(prefix: &str, max: usize) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    assert!(prefix.len() <= 8, "test name prefix {prefix:?} is longer than 8 characters");
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{n}p{}{}", std::process::id() % 100_000, nanos() % 10_000).chars().take(max).collect()
}

/// The DC's `sam.ldb`, from `deploy/dev/samba-dc.sh env` (as [`super::dc`] reads it).
fn sam_ldb() -> &'static PathBuf {
    static SAM_LDB: OnceLock<PathBuf> = OnceLock::new();
    SAM_LDB.get_or_init(|| {
        let output = Command::new("bash")
            .arg(repo_root().join("deploy/dev/samba-dc.sh"))
            .arg("env")
            .output()
            .expect("samba-dc.sh env runs");
        let dir = String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("PWRELAY_TEST_DC_DIR=").map(str::to_owned))
            .expect("samba-dc.sh env prints PWRELAY_TEST_DC_DIR");
        PathBuf::from(dir).join("private/sam.ldb")
    })
}

/// The `unicodePwd` value of `password` (UTF-16LE in double quotes).
fn unicode_pwd(password: &SecretString) -> Vec<u8> {
    format!("\"{}\"", password.expose_secret()).encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// One attribute of an LDAP add.
type Attr = (Vec<u8>, HashSet<Vec<u8>>);

fn attr(name: &str, value: impl Into<Vec<u8>>) -> Attr {
    (name.as_bytes().to_vec(), [value.into()].into())
}

impl TestDc {
    /// Adds `dn` with `attrs` as the administrator. The panic names the DN and the DC's answer,
    /// never the values (they may hold a password).
    async fn add_entry(&self, dn: &str, attrs: Vec<Attr>) {
        let mut ldap = self.admin().await;
        let added = ldap.add(dn, attrs).await;
        let _ = ldap.unbind().await;
        match added {
            Ok(result) if result.rc == 0 => {}
            Ok(result) => panic!("creating {dn} failed: {} (LDAP result {})", result.text, result.rc),
            Err(e) => panic!("creating {dn} failed: {e}"),
        }
    }

    /// Applies `mods` to `dn` as the administrator, panicking with `what` and the DC's answer.
    async fn modify_entry(&self, dn: &str, mods: Vec<Mod<Vec<u8>>>, what: &str) {
        let mut ldap = self.admin().await;
        let modified = ldap.modify(dn, mods).await;
        let _ = ldap.unbind().await;
        match modified {
            Ok(result) if result.rc == 0 => {}
            Ok(result) => panic!("{what} on {dn} failed: {} (LDAP result {})", result.text, result.rc),
            Err(e) => panic!("{what} on {dn} failed: {e}"),
        }
    }

    /// Creates a uniquely named OU `OU=<prefix>...` directly under the base DN and returns its DN.
    /// `prefix`: at most 8 characters.
    pub async fn create_ou(&self, prefix: &str) -> String {
        let name = unique(prefix, 40);
        let dn = format!("OU={name},{}", self.base_dn);
        self.add_entry(&dn, vec![attr("objectClass", "organizationalUnit")]).await;
        dn
    }

    /// Creates an enabled user `CN=<prefix>...,<parent_dn>` (an OU or container such as CN=Users)
    /// with a compliant password, like [`TestDc::create_user`] does in CN=Users. `prefix`: at most
    /// 8 characters.
    pub async fn create_user_in(&self, parent_dn: &str, prefix: &str) -> TestUser {
        let sam = unique(prefix, 20);
        let upn = format!("{sam}@{}", self.domain);
        let dn = format!("CN={sam},{parent_dn}");
        let password = SecretString::from(format!("Tk!{}zQ7", unique("", 20)));
        self.add_entry(
            &dn,
            vec![
                attr("objectClass", "user"),
                attr("sAMAccountName", sam.as_str()),
                attr("userPrincipalName", upn.as_str()),
                attr("unicodePwd", unicode_pwd(&password)),
                attr("userAccountControl", UF_NORMAL_ACCOUNT.to_string()),
            ],
        )
        .await;
        TestUser { sam, upn, dn, password }
    }

    /// Creates a global security group `CN=<prefix>...,<parent_dn>` and returns its DN. Its
    /// sAMAccountName is its CN. `prefix`: at most 8 characters.
    pub async fn create_group(&self, parent_dn: &str, prefix: &str) -> String {
        let sam = unique(prefix, 20);
        let dn = format!("CN={sam},{parent_dn}");
        self.add_entry(&dn, vec![attr("objectClass", "group"), attr("sAMAccountName", sam.as_str())]).await;
        dn
    }

    /// Adds `member_dn` to the group `group_dn`.
    pub async fn add_member(&self, group_dn: &str, member_dn: &str) {
        let member = HashSet::from([member_dn.as_bytes().to_vec()]);
        self.modify_entry(group_dn, vec![Mod::Add(b"member".to_vec(), member)], "adding a member").await;
    }

    /// Creates the agent's service account in `parent_dn`: an ordinary enabled user with no right
    /// beyond those of Domain Users until [`TestDc::delegate_password_rights`] grants some.
    pub async fn create_service_account(&self, parent_dn: &str) -> TestUser {
        self.create_user_in(parent_dn, "svc").await
    }

    /// Delegates pwrelay's rights (Reset Password, write pwdLastSet and lockoutTime, inherited by the
    /// user objects below `ou_dn`) to `account` by running `deploy/ad/grant-rights-samba.sh`.
    pub async fn delegate_password_rights(&self, ou_dn: &str, account: &TestUser) {
        self.delegate_password_rights_to(ou_dn, &account.sam).await;
    }

    /// [`TestDc::delegate_password_rights`] for any account name the script accepts: a user's or a
    /// group's sAMAccountName, or a SID.
    pub async fn delegate_password_rights_to(&self, ou_dn: &str, account: &str) {
        self.run_grant_script(&[account, ou_dn]);
    }

    /// Takes the rights of [`TestDc::delegate_password_rights_to`] away again
    /// (`grant-rights-samba.sh --remove`).
    pub async fn revoke_password_rights(&self, ou_dn: &str, account: &str) {
        self.run_grant_script(&["--remove", account, ou_dn]);
    }

    /// Replaces `attr` of `dn` with the single `value`, e.g. `adminCount` = `1`, or
    /// `userAccountControl` = `514` (UF_NORMAL_ACCOUNT | UF_ACCOUNTDISABLE) /
    /// `66048` (UF_NORMAL_ACCOUNT | UF_DONT_EXPIRE_PASSWD).
    pub async fn set_attribute(&self, dn: &str, attr: &str, value: &str) {
        let value = HashSet::from([value.as_bytes().to_vec()]);
        self.modify_entry(dn, vec![Mod::Replace(attr.as_bytes().to_vec(), value)], &format!("setting {attr}")).await;
    }

    /// Does to `dn` what Windows AD's SDProp does hourly to members of protected groups: sets
    /// `adminCount=1` and replaces its DACL with AdminSDHolder's, protected from inheritance, so no
    /// OU delegation reaches it any more. (Samba never runs SDProp by itself.)
    pub async fn stamp_admin_sd_holder(&self, dn: &str) {
        let holder = format!("CN=AdminSDHolder,CN=System,{}", self.base_dn);
        let sd_flags = || RawControl { ctype: SD_FLAGS_OID.into(), crit: true, val: Some(SD_FLAGS_DACL.to_vec()) };
        let mut ldap = self.admin().await;
        let (entries, _) = ldap
            .with_controls(sd_flags())
            .search(&holder, Scope::Base, "(objectClass=*)", vec!["nTSecurityDescriptor"])
            .await
            .and_then(|r| r.success())
            .unwrap_or_else(|e| panic!("reading the security descriptor of {holder} failed: {e}"));
        let mut sd = entries
            .into_iter()
            .map(SearchEntry::construct)
            .find_map(|e| e.bin_attrs.get("nTSecurityDescriptor").and_then(|v| v.first().cloned()))
            .unwrap_or_else(|| panic!("{holder} has no readable nTSecurityDescriptor"));
        assert!(sd.len() >= 20, "the security descriptor of {holder} is truncated");
        // Self-relative SECURITY_DESCRIPTOR: revision, sbz1, then the control word (little-endian).
        let control = u16::from_le_bytes([sd[2], sd[3]]) | SE_DACL_PROTECTED;
        sd[2..4].copy_from_slice(&control.to_le_bytes());
        let written = ldap
            .with_controls(sd_flags())
            .modify(dn, vec![Mod::Replace(b"nTSecurityDescriptor".to_vec(), HashSet::from([sd]))])
            .await
            .and_then(|r| r.success());
        let _ = ldap.unbind().await;
        if let Err(e) = written {
            panic!("writing the AdminSDHolder DACL to {dn} failed: {e}");
        }
        self.set_attribute(dn, "adminCount", "1").await;
    }

    /// Creates a fine-grained password policy (PSO) that applies to `applies_to_dn` (a user or a
    /// group) with precedence [`PSO_PRECEDENCE`], no minimum age, the default maximum age and no
    /// lockout, and returns its DN. The user's `msDS-ResultantPSO` then names it.
    pub async fn create_pso(&self, applies_to_dn: &str, min_length: u32, complexity: bool, history: u32) -> String {
        self.add_pso(applies_to_dn, PSO_PRECEDENCE, min_length, complexity, history, 0).await
    }

    async fn add_pso(
        &self,
        applies_to_dn: &str,
        precedence: u32,
        min_length: u32,
        complexity: bool,
        history: u32,
        lockout_threshold: u32,
    ) -> String {
        let dn = format!("CN={},CN=Password Settings Container,CN=System,{}", unique("pso", 40), self.base_dn);
        let flag = |b: bool| if b { "TRUE" } else { "FALSE" };
        self.add_entry(
            &dn,
            vec![
                attr("objectClass", "msDS-PasswordSettings"),
                attr("msDS-PasswordSettingsPrecedence", precedence.to_string()),
                attr("msDS-PasswordReversibleEncryptionEnabled", "FALSE"),
                attr("msDS-PasswordHistoryLength", history.to_string()),
                attr("msDS-PasswordComplexityEnabled", flag(complexity)),
                attr("msDS-MinimumPasswordLength", min_length.to_string()),
                attr("msDS-MinimumPasswordAge", "0"),
                attr("msDS-MaximumPasswordAge", MAX_PASSWORD_AGE),
                attr("msDS-LockoutThreshold", lockout_threshold.to_string()),
                attr("msDS-LockoutObservationWindow", THIRTY_MINUTES),
                attr("msDS-LockoutDuration", THIRTY_MINUTES),
                attr("msDS-PSOAppliesTo", applies_to_dn),
            ],
        )
        .await;
        dn
    }

    /// `msDS-User-Account-Control-Computed` of `dn` (LOCKOUT 0x10, PASSWORD_EXPIRED 0x800000).
    pub async fn computed_account_control(&self, dn: &str) -> u32 {
        let value = self.attribute(dn, "msDS-User-Account-Control-Computed").await;
        value
            .as_deref()
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or_else(|| panic!("msDS-User-Account-Control-Computed of {dn} is unreadable: {value:?}"))
    }

    /// Really locks `user` out: applies a PSO with lockout threshold 3 (30-minute duration) to this
    /// user only, then binds with wrong passwords until `msDS-User-Account-Control-Computed` shows
    /// LOCKOUT, and checks that a bind with `user.password` then fails with `data 775`.
    ///
    /// The PSO has precedence 1, so it wins over one from [`TestDc::create_pso`] on the same user;
    /// its password rules are AD's defaults (7 characters, complexity, no history, no minimum age).
    pub async fn lock_out(&self, user: &TestUser) {
        const THRESHOLD: u32 = 3;
        self.add_pso(&user.dn, LOCKOUT_PSO_PRECEDENCE, 7, true, 0, THRESHOLD).await;
        let mut attempts = 0;
        while self.computed_account_control(&user.dn).await & UF_LOCKOUT == 0 {
            assert!(
                attempts < THRESHOLD + 3,
                "{} stays unlocked after {attempts} failed binds with a lockout threshold of {THRESHOLD}",
                user.dn
            );
            attempts += 1;
            let wrong = format!("Wrong!{attempts}-{}", unique("", 12));
            let outcome = self.bind(&user.dn, &wrong).await;
            assert!(!outcome.ok(), "a bind of {} with a wrong password succeeded", user.dn);
        }
        let outcome = self.bind(&user.dn, user.password.expose_secret()).await;
        assert!(
            !outcome.ok() && outcome.text.contains("data 775"),
            "{} is marked locked out but a bind answers {} {:?} instead of data 775",
            user.dn,
            outcome.rc,
            outcome.text
        );
    }
}

impl TestDc {
    /// Gives `user` (a user created for one test, never the administrator) a lockout threshold of
    /// `threshold` failed logons in 30 minutes with a PSO that applies to it alone, as
    /// [`TestDc::lock_out`] does. Samba counts failed logons (`badPwdCount`) only under a lockout
    /// threshold.
    pub async fn apply_lockout_threshold(&self, user: &TestUser, threshold: u32) {
        assert_ne!(user.dn, self.admin_dn, "never the shared administrator");
        self.add_pso(&user.dn, LOCKOUT_PSO_PRECEDENCE, 7, true, 0, threshold).await;
    }

    /// The failed logons the DC counts for `dn` (`badPwdCount`, 0 when unset), read as the
    /// administrator.
    pub async fn bad_password_count(&self, dn: &str) -> u32 {
        let value = self.attribute(dn, "badPwdCount").await;
        value.as_deref().map_or(Some(0), |v| v.parse().ok()).unwrap_or_else(|| panic!("badPwdCount of {dn}: {value:?}"))
    }
}

impl TestDc {
    /// Runs `deploy/ad/grant-rights-samba.sh` with `args`, panicking with its output on failure.
    /// As root it works on the DC's `sam.ldb`, as the DC itself does; otherwise it goes over
    /// `ldap://` as the administrator, whose password travels in the `PASSWD` environment variable
    /// of the child process only.
    fn run_grant_script(&self, args: &[&str]) {
        let script = repo_root().join("deploy/ad/grant-rights-samba.sh");
        let mut command = Command::new("bash");
        command.arg(&script);
        let sam_ldb = sam_ldb();
        if std::fs::File::open(sam_ldb).is_ok() {
            command.arg("-H").arg(sam_ldb);
        } else {
            let admin = self.admin_dn.split(',').next().and_then(|rdn| rdn.get(3..)).unwrap_or("Administrator");
            let user = format!("{admin}@{}", self.domain.as_str().to_uppercase());
            command.args(["-H", &self.ldap_url, "-U", &user]).env("PASSWD", self.admin_password.expose_secret());
        }
        let output = command.args(args).output().unwrap_or_else(|e| panic!("{} cannot be run: {e}", script.display()));
        assert!(
            output.status.success(),
            "{} {args:?} failed ({}): {}{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_fit_and_differ() {
        let a = unique("svc", 20);
        let b = unique("svc", 20);
        assert_ne!(a, b);
        assert!(a.starts_with("svc") && a.len() <= 20, "{a}");
    }

    #[test]
    fn unicode_pwd_is_quoted_utf16le() {
        assert_eq!(unicode_pwd(&SecretString::from("Ab1!")), b"\"\0A\0b\x001\0!\0\"\0");
    }
}
