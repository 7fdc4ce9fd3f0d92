#!/usr/bin/env bash
# Delegates to pwrelay's service account, on a Samba AD DC, exactly the rights the agent uses on the
# user objects below one or more OUs (the Samba counterpart of Grant-PwRelayRights.ps1):
#
#   Reset Password (extended right 00299570-246d-11d0-a768-00aa006e0529)  write unicodePwd (admin reset)
#   write property pwdLastSet  (bf967a0a-0de6-11d0-a285-00aa003049e2)     must-change (0) or now (-1)
#   write property lockoutTime (28630ebf-41d5-11d1-a9c1-0000f80367c1)     unlock (0)
#
# each as one object ACE on the OU, inherited by user objects only (bf967aba-... is the user class):
#   (OA;CIIO;CR;00299570-246d-11d0-a768-00aa006e0529;bf967aba-0de6-11d0-a285-00aa003049e2;<SID>)
#   (OA;CIIO;WP;<attribute schemaIDGUID>;bf967aba-0de6-11d0-a285-00aa003049e2;<SID>)
#
# Granting twice changes nothing (samba-tool skips an ACE that is already there). --remove takes the
# three ACEs away again; samba-tool 4.17 has no `dsacl delete`, so that part uses Samba's own Python
# bindings (the ones samba-tool runs on), as does the name-to-SID look-up.
#
# Accounts with adminCount=1 are not covered on Windows AD (AdminSDHolder re-stamps their ACL every
# hour); Samba does not run that process, but pwrelay refuses them anyway unless explicitly allowed.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: grant-rights-samba.sh -H URL [-U USER] [-s SMB_CONF] [--use-kerberos=required] [--remove] [--dry-run]
                             ACCOUNT OU_DN [OU_DN ...]

Delegates Reset Password and write pwdLastSet / lockoutTime on the user objects below each OU_DN
to ACCOUNT (inherited, user objects only). --remove revokes exactly these rights.

  ACCOUNT     sAMAccountName of the agent's service account (a user, a gMSA such as svc-pwrelay$, or a
              group that holds it), or its SID (S-1-5-21-...)
  OU_DN       an OU (or container) whose user accounts the agent manages, e.g. OU=Staff,DC=example,DC=com
  -H URL      ldap://dc1.example.com (samba-tool signs and seals the session), or the sam.ldb path
              when run as root on the DC itself (e.g. /var/lib/samba/private/sam.ldb).
              ldaps:// is refused: samba-tool cannot use it.
  -U USER     the administrator to bind as over ldap://, e.g. 'EXAMPLE\Administrator'. The password is
              asked for, or taken from the PASSWD environment variable; never pass it as an argument.
  -s FILE     smb.conf to load (samba-tool's default otherwise)
  --use-kerberos=required   bind with the Kerberos ticket of kinit instead of a password
  --remove    revoke the three rights instead of granting them
  --dry-run   resolve and print what would be done, change nothing
  -h, --help  this text

Environment: PASSWD (the password for -U), PYTHON (an interpreter with Samba's Python modules;
default: the one samba-tool runs with).

Verify: samba-tool dsacl get -H URL --objectdn=OU_DN   (shows the three ACEs with the account's SID)
EOF
}

die() { echo "grant-rights-samba.sh: $*" >&2; exit 1; }

readonly USER_CLASS=bf967aba-0de6-11d0-a285-00aa003049e2
readonly RESET_PASSWORD=00299570-246d-11d0-a768-00aa006e0529
readonly PWD_LAST_SET=bf967a0a-0de6-11d0-a285-00aa003049e2
readonly LOCKOUT_TIME=28630ebf-41d5-11d1-a9c1-0000f80367c1

url="" remove=false dry_run=false
samba_opts=()
positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    -H|--URL) [ $# -ge 2 ] || die "$1 needs a value"; url=$2; shift 2 ;;
    -H*) url=${1#-H}; shift ;;
    --URL=*) url=${1#--URL=}; shift ;;
    -U|--username|-s|--configfile) [ $# -ge 2 ] || die "$1 needs a value"; samba_opts+=("$1" "$2"); shift 2 ;;
    --username=*|--configfile=*|--use-kerberos=*) samba_opts+=("$1"); shift ;;
    --password|--password=*) die "do not pass the password as an argument; set PASSWD in the environment or let samba-tool ask" ;;
    --remove) remove=true; shift ;;
    --dry-run) dry_run=true; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; positional+=("$@"); break ;;
    -*) usage >&2; die "unknown option $1" ;;
    *) positional+=("$1"); shift ;;
  esac
done

[ -n "$url" ] || { usage >&2; die "-H is required (ldap://DC or the sam.ldb path)"; }
[ ${#positional[@]} -ge 2 ] || { usage >&2; die "ACCOUNT and at least one OU_DN are required"; }
case "$url" in
  ldaps://*) die "samba-tool cannot use ldaps://; use ldap://${url#ldaps://} (the session is signed and sealed) or the sam.ldb path" ;;
  ldap://*) ;;
  *) [ -r "$url" ] || die "$url is neither ldap://... nor a readable sam.ldb (run as root on the DC)" ;;
esac
command -v samba-tool >/dev/null || die "samba-tool is not installed (Debian: apt-get install samba-common-bin)"

account=${positional[0]}
ous=("${positional[@]:1}")

# samba-tool's own interpreter, which finds Samba's Python modules.
python=$(sed -n '1s/^#![[:space:]]*//p' "$(command -v samba-tool)")
case "$python" in */env\ *|"") python=python3 ;; esac
if [ -n "${PYTHON:-}" ]; then python=$PYTHON; fi

# `samba_py resolve ACCOUNT OU...`: finds the account (by sAMAccountName or SID), checks that each
# OU exists, and prints "SID<tab>DN". `samba_py remove DN ACES`: deletes those explicit ACEs from
# DN's DACL.
samba_py() {
  "$python" -c '
import optparse, re, sys
import ldb
import samba.getopt as options
from samba.auth import system_session
from samba.dcerpc import security
from samba.ndr import ndr_unpack
from samba.samdb import SamDB
from samba.sd_utils import SDUtils

parser = optparse.OptionParser()
parser.add_option("-H", dest="url")
sambaopts = options.SambaOptions(parser)
credopts = options.CredentialsOptions(parser)
opts, args = parser.parse_args()
lp = sambaopts.get_loadparm()
try:
    samdb = SamDB(url=opts.url, session_info=system_session(), credentials=credopts.get_credentials(lp), lp=lp)
except ldb.LdbError as e:
    sys.exit("cannot open %s: %s" % (opts.url, e.args[-1]))

def fail(message):
    sys.exit(message)

if args[0] == "resolve":
    account, ous = args[1], args[2:]
    if account.upper().startswith("S-1-"):
        res = samdb.search("<SID=%s>" % account, ldb.SCOPE_BASE, attrs=["objectSid"])
    else:
        name = account.split("\\")[-1]
        res = samdb.search(samdb.domain_dn(), ldb.SCOPE_SUBTREE,
                           "(sAMAccountName=%s)" % ldb.binary_encode(name), ["objectSid"])
        if len(res) == 0 and not name.endswith("$"):
            res = samdb.search(samdb.domain_dn(), ldb.SCOPE_SUBTREE,
                               "(sAMAccountName=%s$)" % ldb.binary_encode(name), ["objectSid"])
    if len(res) != 1:
        fail("no account %s in %s" % (account, samdb.domain_dn()))
    for ou in ous:
        try:
            samdb.search(ou, ldb.SCOPE_BASE, attrs=["objectClass"])
        except ldb.LdbError:
            fail("no object %s" % ou)
    print("%s\t%s" % (ndr_unpack(security.dom_sid, res[0]["objectSid"][0]), res[0].dn))
elif args[0] == "remove":
    # SDUtils.dacl_delete_aces of Samba 4.17 never matches (a parsed ACE has size 0), so the ACEs are
    # compared in their canonical SDDL form. Inherited ACEs are dropped before the write, as
    # samba-tool does: the DC inherits them again.
    dn, aces = args[1], args[2]
    sdu = SDUtils(samdb)
    dacl_only = ["sd_flags:1:%d" % security.SECINFO_DACL]
    sd = sdu.read_sd_on_dn(dn, controls=dacl_only)
    unprotected = not sd.type & security.SEC_DESC_DACL_PROTECTED
    canonical = lambda sddl: security.descriptor.from_sddl(sddl, sdu.domain_sid).as_sddl(sdu.domain_sid)
    targets = set(re.findall(r"\(.*?\)", canonical("D:" + aces)))
    current = canonical(sd.as_sddl(sdu.domain_sid))
    kept = current
    for ace in re.findall(r"\(.*?\)", current):
        inherited = "ID" in ace[1:-1].split(";")[1]
        if ace in targets or (inherited and unprotected):
            kept = kept.replace(ace, "", 1)
    if kept != current:
        sdu.modify_sd_on_dn(dn, security.descriptor.from_sddl(kept, sdu.domain_sid), controls=dacl_only)
' -H "$url" ${samba_opts[@]+"${samba_opts[@]}"} "$@"
}

resolved=$(samba_py resolve "$account" "${ous[@]}") || die "cannot resolve $account or an OU (see above)"
sid=${resolved%%$'\t'*}
account_dn=${resolved#*$'\t'}
[[ $sid =~ ^S-1-[0-9-]+$ ]] || die "unexpected SID '$sid' for $account"

aces="(OA;CIIO;CR;$RESET_PASSWORD;$USER_CLASS;$sid)"
aces+="(OA;CIIO;WP;$PWD_LAST_SET;$USER_CLASS;$sid)"
aces+="(OA;CIIO;WP;$LOCKOUT_TIME;$USER_CLASS;$sid)"

# How many of the three ACEs the OU's DACL holds for the SID.
present() {
  local sddl
  sddl=$(samba-tool dsacl get -H "$url" ${samba_opts[@]+"${samba_opts[@]}"} --objectdn="$1" 2>/dev/null) \
    || die "cannot read the ACL of $1"
  local n=0 ace
  for ace in "CR;$RESET_PASSWORD" "WP;$PWD_LAST_SET" "WP;$LOCKOUT_TIME"; do
    if grep -qiF "(OA;CIIO;$ace;$USER_CLASS;$sid)" <<<"$sddl"; then n=$((n + 1)); fi
  done
  echo "$n"
}

echo "account: $account_dn ($sid)"
for ou in "${ous[@]}"; do
  if $remove; then
    if $dry_run; then echo "would revoke on $ou: $aces"; continue; fi
    samba_py remove "$ou" "$aces" || die "revoking the rights on $ou failed"
    [ "$(present "$ou")" = 0 ] || die "the rights are still present on $ou after the removal"
    echo "revoked Reset Password, write pwdLastSet and write lockoutTime on user objects below $ou"
  else
    if $dry_run; then echo "would run: samba-tool dsacl set -H $url --objectdn='$ou' --sddl='$aces'"; continue; fi
    # samba-tool prints the whole old and new descriptor: keep it only for an error.
    if ! out=$(samba-tool dsacl set -H "$url" ${samba_opts[@]+"${samba_opts[@]}"} --objectdn="$ou" --sddl="$aces" 2>&1); then
      echo "$out" | tail -5 >&2
      die "samba-tool dsacl set on $ou failed"
    fi
    [ "$(present "$ou")" = 3 ] || die "samba-tool reported success but the ACEs are not all on $ou"
    echo "granted Reset Password, write pwdLastSet and write lockoutTime on user objects below $ou"
  fi
done
