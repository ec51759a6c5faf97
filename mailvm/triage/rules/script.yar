// Script indicators: encoded PowerShell, base64 decoded and executed, WScript.Shell,
// LOLBins used as downloaders (certutil, mshta), download piped into a shell.

rule powershell_encoded_command
{
    meta:
        id = "powershell_encoded_command"
        severity = 7
        description = "powershell started with an encoded command (-enc <base64>)"
    strings:
        $re = /powershell(\.exe)?["']?\s[^\r\n]{0,200}\s[-\/]e(c|n|nc|nco|ncod|ncode|ncoded|ncodedcommand)?\s+["']?[A-Za-z0-9+\/=]{32}/ nocase ascii wide
    condition:
        $re
}

rule powershell_base64_exec
{
    meta:
        id = "powershell_base64_exec"
        severity = 6
        description = "FromBase64String output executed (IEX / Invoke-Expression / Assembly.Load)"
    strings:
        $b = "FromBase64String" nocase ascii wide
        $x1 = /\biex\b/ nocase ascii wide
        $x2 = "Invoke-Expression" nocase ascii wide
        $x3 = "Reflection.Assembly]::Load" nocase ascii wide
    condition:
        $b and any of ($x*)
}

rule js_eval_base64
{
    meta:
        id = "js_eval_base64"
        severity = 6
        description = "JavaScript evaluates base64-decoded code: eval(atob(...))"
    strings:
        $re = /eval\s*\(\s*(window\.)?atob\s*\(/ nocase ascii wide
    condition:
        $re
}

rule wscript_shell_exec
{
    meta:
        id = "wscript_shell_exec"
        severity = 5
        description = "WScript.Shell object used to run a program"
    strings:
        $o = "WScript.Shell" nocase ascii wide
        $r1 = /\.(Run|Exec)\s*\(/ nocase ascii wide
        $r2 = /\.Run\s+["a-z]/ nocase ascii wide
    condition:
        $o and any of ($r*)
}

rule certutil_abuse
{
    meta:
        id = "certutil_abuse"
        severity = 7
        description = "certutil used to decode or download a file"
    strings:
        $re = /certutil(\.exe)?["']?\s+[^\r\n]{0,40}[-\/](decode|decodehex|urlcache)\b/ nocase ascii wide
    condition:
        $re
}

rule mshta_remote
{
    meta:
        id = "mshta_remote"
        severity = 7
        description = "mshta runs remote or inline script"
    strings:
        $re = /mshta(\.exe)?["']?\s+["']?(https?:|javascript:|vbscript:|\\\\)/ nocase ascii wide
    condition:
        $re
}

rule shell_download_pipe
{
    meta:
        id = "shell_download_pipe"
        severity = 7
        description = "download piped straight into a shell (curl ... | sh)"
    strings:
        $re = /\b(curl|wget)\s[^\r\n|;]{0,300}\|\s*(sudo\s+)?(ba|z|da|k)?sh\b/ ascii
    condition:
        $re
}
