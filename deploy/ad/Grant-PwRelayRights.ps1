<#
.SYNOPSIS
    Delegates to the pwrelay agent's service account exactly the rights it needs on the user
    accounts below one or more OUs (or revokes them with -Remove).

.DESCRIPTION
    Adds three object ACEs to each OU. Each is inherited by user objects only (inherited object
    type: the user class, bf967aba-0de6-11d0-a285-00aa003049e2) and does not apply to the OU itself
    (SDDL: OA;CIIO;...). Nothing else is granted: no other attribute, no create, delete or move, no
    rights on groups or computers, no read rights beyond what Authenticated Users already have.

      Reset Password            extended right 00299570-246d-11d0-a768-00aa006e0529
          An administrative reset: the agent replaces unicodePwd without knowing the old
          password (rotation, reconcile, new-hire initial password).
      Write property pwdLastSet attribute bf967a0a-0de6-11d0-a285-00aa003049e2
          The agent writes 0 ("user must change password at next logon", new hires) or -1
          ("set now", rotations) in the same modify as the password, then reads it back.
      Write property lockoutTime attribute 28630ebf-41d5-11d1-a9c1-0000f80367c1
          Writing 0 unlocks the account and clears badPwdCount (unlock jobs, and reset with
          unlock).

    Running the script twice changes nothing; -Remove takes away exactly these rights and leaves
    any other ACE alone. -WhatIf shows what would change.

    UNEXPIRE-PASSWORD (not granted)
    Unexpire-Password (control access right ccc2dc7d-a6ad-4a7a-8846-c04e3cc53501) is checked on the
    domain head (for example DC=example,DC=com), not on the OU. Without it, AD leaves pwdLastSet=0
    after a password reset: the user would have to change the password at next logon whatever was
    asked. pwrelay therefore always writes pwdLastSet explicitly (0 or -1) together with unicodePwd,
    which the write-pwdLastSet right above allows, and reads it back; if the value read back is not
    the one asked for, the job fails with VERIFICATION_FAILED instead of reporting success. Should
    that happen in your domain, grant Unexpire-Password on the domain head by hand:
        dsacls "DC=example,DC=com" /G "EXAMPLE\svc-pwrelay:CA;Unexpire Password"
    It is a domain-wide right, so this script does not grant it. (Samba AD DC 4.17 takes -1 from a
    delegated account without it.)

    PROTECTED ACCOUNTS (AdminSDHolder)
    Accounts that are, or were, members of protected groups (Domain Admins, Enterprise Admins,
    Schema Admins, Administrators, Account/Server/Print/Backup Operators, ...) carry adminCount=1.
    Every 60 minutes the SDProp process on the PDC emulator replaces their ACL with the one of
    CN=AdminSDHolder,CN=System,<domain>, with inheritance disabled. OU delegation therefore never
    reaches them: a reset may work for up to an hour after such an account is created in or moved
    to the OU, then fails with insufficient access. adminCount stays 1 after the account leaves the
    protected group. The agent refuses accounts with adminCount=1, built-in protected accounts and
    members of protected groups (PROTECTED_ACCOUNT) unless [domains.protected] allow in agent.toml
    names the account or a group it is in. Even then the DC refuses the reset once SDProp has run,
    because rights granted on the account itself are overwritten too; only an ACE on AdminSDHolder
    survives, and it reaches every protected account, administrators included, which is why this
    script never grants anything there. Take accounts that are no longer privileged out of the
    protected groups, clear adminCount and re-enable inheritance on them instead. After granting,
    the script lists the accounts below each OU that have adminCount=1.

    VERIFY
        dsacls "OU=Staff,DC=example,DC=com"
    lists, among the permissions inherited to user objects ("Inherited to user"), the service
    account with Reset Password and with WRITE PROPERTY on pwdLastSet and on lockoutTime. On one
    account below the OU, the same three entries appear as inherited:
        dsacls "CN=Jane Doe,OU=Staff,DC=example,DC=com" | findstr /i svc-pwrelay
    or in PowerShell:
        (Get-Acl "AD:\OU=Staff,DC=example,DC=com").Access |
            Where-Object IdentityReference -like '*svc-pwrelay*'
    The same rights with dsacls alone:
        dsacls "OU=Staff,DC=example,DC=com" /I:S /G "EXAMPLE\svc-pwrelay:CA;Reset Password;user"
        dsacls "OU=Staff,DC=example,DC=com" /I:S /G "EXAMPLE\svc-pwrelay:WP;pwdLastSet;user"
        dsacls "OU=Staff,DC=example,DC=com" /I:S /G "EXAMPLE\svc-pwrelay:WP;lockoutTime;user"

.PARAMETER ServiceAccount
    The agent's service account (or a group that holds it): sAMAccountName (svc-pwrelay, or
    EXAMPLE\svc-pwrelay), or SID (S-1-5-21-...). It should be an ordinary account, member of no
    privileged group.

.PARAMETER OrganizationalUnit
    Distinguished names of the OUs whose user accounts the agent manages, for example
    "OU=Staff,DC=example,DC=com". The rights reach every user object below each OU, at any depth.

.PARAMETER Remove
    Revoke the three rights instead of granting them.

.PARAMETER Server
    The domain controller to work on (default: one the ActiveDirectory module locates).

.EXAMPLE
    .\Grant-PwRelayRights.ps1 -ServiceAccount svc-pwrelay -OrganizationalUnit "OU=Staff,DC=example,DC=com" -WhatIf

    Shows what would be granted.

.EXAMPLE
    .\Grant-PwRelayRights.ps1 -ServiceAccount svc-pwrelay -OrganizationalUnit "OU=Staff,DC=example,DC=com","OU=Contractors,DC=example,DC=com"

    Grants the rights on two OUs.

.EXAMPLE
    .\Grant-PwRelayRights.ps1 -ServiceAccount svc-pwrelay -OrganizationalUnit "OU=Staff,DC=example,DC=com" -Remove

    Revokes them.

.OUTPUTS
    One object per OU and right: OrganizationalUnit, Right, Result (Granted, AlreadyPresent,
    Revoked, Absent, or WhatIf).

.NOTES
    Run as a member of Domain Admins, or of a group allowed to change permissions on the OUs, on a
    machine with the ActiveDirectory module (RSAT). The Samba AD DC equivalent is
    deploy/ad/grant-rights-samba.sh.
#>
#Requires -Version 5.1
#Requires -Modules ActiveDirectory
[CmdletBinding(SupportsShouldProcess = $true, ConfirmImpact = 'Medium')]
param(
    [Parameter(Mandatory = $true)]
    [ValidateNotNullOrEmpty()]
    [string] $ServiceAccount,

    [Parameter(Mandatory = $true)]
    [ValidateNotNullOrEmpty()]
    [string[]] $OrganizationalUnit,

    [switch] $Remove,

    [string] $Server
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
Import-Module ActiveDirectory -ErrorAction Stop
Add-Type -AssemblyName System.DirectoryServices

$UserClass = [guid]'bf967aba-0de6-11d0-a285-00aa003049e2'
$Rights = @(
    @{ Name = 'Reset Password'; Rights = 'ExtendedRight'; Guid = [guid]'00299570-246d-11d0-a768-00aa006e0529' }
    @{ Name = 'Write pwdLastSet'; Rights = 'WriteProperty'; Guid = [guid]'bf967a0a-0de6-11d0-a285-00aa003049e2' }
    @{ Name = 'Write lockoutTime'; Rights = 'WriteProperty'; Guid = [guid]'28630ebf-41d5-11d1-a9c1-0000f80367c1' }
)

$ad = @{}
if ($Server) { $ad['Server'] = $Server }

function Resolve-PwRelayPrincipal {
    param([string] $Name)
    if ($Name -match '^S-1-\d+(-\d+)+$') {
        $found = @(Get-ADObject @ad -Filter "objectSid -eq '$Name'" -Properties objectSid, adminCount)
    } else {
        $sam = ($Name -split '\\')[-1]
        if ($sam -match '["/\\\[\]:;|=,+*?<>@()]') {
            throw "'$Name' holds a character this script does not accept in a sAMAccountName; pass the SID instead"
        }
        $found = @(Get-ADObject @ad -LDAPFilter "(sAMAccountName=$sam)" -Properties objectSid, adminCount)
        if ($found.Count -eq 0 -and -not $sam.EndsWith('$')) {
            # A group managed service account's sAMAccountName ends with '$'.
            $found = @(Get-ADObject @ad -LDAPFilter "(sAMAccountName=$sam`$)" -Properties objectSid, adminCount)
        }
    }
    if ($found.Count -ne 1) {
        throw "no single account '$Name' found in the domain (found $($found.Count)); pass its sAMAccountName or SID"
    }
    return $found[0]
}

function Open-PwRelayEntry {
    param([string] $DistinguishedName)
    $escaped = $DistinguishedName.Replace('/', '\/')
    $path = if ($Server) { "LDAP://$Server/$escaped" } else { "LDAP://$escaped" }
    $entry = New-Object System.DirectoryServices.DirectoryEntry($path)
    # Read and write the DACL only: owner, group and SACL stay as they are.
    $entry.Options.SecurityMasks = [System.DirectoryServices.SecurityMasks]::Dacl
    $entry.RefreshCache(@('nTSecurityDescriptor'))
    return $entry
}

function New-PwRelayRule {
    param([System.Security.Principal.SecurityIdentifier] $Sid, [hashtable] $Right)
    return New-Object System.DirectoryServices.ActiveDirectoryAccessRule(
        $Sid,
        ([System.DirectoryServices.ActiveDirectoryRights] $Right.Rights),
        [System.Security.AccessControl.AccessControlType]::Allow,
        $Right.Guid,
        [System.DirectoryServices.ActiveDirectorySecurityInheritance]::Descendents,
        $UserClass)
}

function Test-PwRelayRule {
    # Whether an explicit ACE in $Security already allows what $Rule allows.
    param([System.DirectoryServices.ActiveDirectorySecurity] $Security, $Rule)
    $explicit = $Security.GetAccessRules($true, $false, [System.Security.Principal.SecurityIdentifier])
    foreach ($ace in $explicit) {
        if ($ace.IdentityReference -eq $Rule.IdentityReference -and
            $ace.AccessControlType -eq $Rule.AccessControlType -and
            ($ace.ActiveDirectoryRights -band $Rule.ActiveDirectoryRights) -eq $Rule.ActiveDirectoryRights -and
            $ace.ObjectType -eq $Rule.ObjectType -and
            $ace.InheritedObjectType -eq $Rule.InheritedObjectType -and
            $ace.InheritanceType -eq $Rule.InheritanceType) {
            return $true
        }
    }
    return $false
}

$principal = Resolve-PwRelayPrincipal -Name $ServiceAccount
$sid = [System.Security.Principal.SecurityIdentifier] $principal.objectSid
$who = "$($principal.DistinguishedName) ($($sid.Value))"
if ($principal.PSObject.Properties['adminCount'] -and $principal.adminCount -eq 1) {
    Write-Warning "$who has adminCount=1: the service account should be an ordinary, unprivileged account"
}

foreach ($ou in $OrganizationalUnit) {
    try {
        $null = Get-ADObject @ad -Identity $ou
    } catch {
        throw "no object '$ou' in the domain: $($_.Exception.Message)"
    }
    $entry = Open-PwRelayEntry -DistinguishedName $ou
    $security = $entry.ObjectSecurity
    $results = @()
    foreach ($right in $Rights) {
        $rule = New-PwRelayRule -Sid $sid -Right $right
        $present = Test-PwRelayRule -Security $security -Rule $rule
        $result = if ($Remove) {
            if ($present) { $null = $security.RemoveAccessRule($rule); 'Revoked' } else { 'Absent' }
        } else {
            if ($present) { 'AlreadyPresent' } else { $security.AddAccessRule($rule); 'Granted' }
        }
        $results += [pscustomobject]@{ OrganizationalUnit = $ou; Right = $right.Name; Result = $result }
    }
    $changed = @($results | Where-Object { $_.Result -in 'Granted', 'Revoked' })
    if ($changed.Count -gt 0) {
        $list = ($changed | ForEach-Object Right) -join ', '
        $what = if ($Remove) { "revoke $list on user objects from $who" } else { "grant $list on user objects to $who" }
        if ($PSCmdlet.ShouldProcess($ou, $what)) {
            $entry.CommitChanges()
        } else {
            foreach ($r in $changed) { $r.Result = 'WhatIf' }
        }
    }
    $entry.Dispose()
    $results

    if (-not $Remove) {
        $protected = @(Get-ADUser @ad -SearchBase $ou -SearchScope Subtree -LDAPFilter '(adminCount=1)')
        if ($protected.Count -gt 0) {
            $names = ($protected | ForEach-Object DistinguishedName) -join '; '
            Write-Warning ("$($protected.Count) account(s) below $ou have adminCount=1: AdminSDHolder " +
                "replaces their ACL hourly, so this delegation does not reach them, and the agent refuses " +
                "them unless [domains.protected] allow names them: $names")
        }
    }
}
