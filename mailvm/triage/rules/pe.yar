// Executable indicators from strings: packers and API combinations typical of
// injection, hollowing and keylogging.  Strings, not the import table: these also
// match names resolved at run time with GetProcAddress.

private rule is_pe
{
    condition:
        uint16(0) == 0x5A4D and uint32(0x3C) < filesize - 4 and uint32(uint32(0x3C)) == 0x00004550
}

private rule is_elf
{
    condition:
        uint32(0) == 0x464C457F
}

rule pe_upx_packed
{
    meta:
        id = "pe_upx_packed"
        severity = 4
        description = "PE packed with UPX (UPX0/UPX1 sections or UPX! marker)"
    strings:
        $s0 = "UPX0" ascii
        $s1 = "UPX1" ascii
        $marker = "UPX!" ascii
    condition:
        is_pe and (($s0 and $s1) or $marker)
}

rule elf_upx_packed
{
    meta:
        id = "elf_upx_packed"
        severity = 4
        description = "ELF packed with UPX"
    strings:
        $marker = "UPX!" ascii
    condition:
        is_elf and $marker
}

rule pe_injection_apis
{
    meta:
        id = "pe_injection_strings"
        severity = 6
        description = "remote process injection APIs: VirtualAllocEx + WriteProcessMemory + CreateRemoteThread"
    strings:
        $a1 = "VirtualAllocEx" ascii wide
        $a2 = "WriteProcessMemory" ascii wide
        $a3 = "CreateRemoteThread" ascii wide
        $a3b = "NtCreateThreadEx" ascii wide
        $a3c = "QueueUserAPC" ascii wide
    condition:
        is_pe and $a1 and $a2 and ($a3 or $a3b or $a3c)
}

rule pe_hollowing_apis
{
    meta:
        id = "pe_hollowing_strings"
        severity = 6
        description = "process hollowing APIs: (Nt|Zw)UnmapViewOfSection + SetThreadContext + ResumeThread"
    strings:
        $u1 = "NtUnmapViewOfSection" ascii wide
        $u2 = "ZwUnmapViewOfSection" ascii wide
        $c = "SetThreadContext" ascii wide
        $r = "ResumeThread" ascii wide
        $w = "WriteProcessMemory" ascii wide
    condition:
        is_pe and ($u1 or $u2) and $c and $r and $w
}

rule pe_keylogger_apis
{
    meta:
        id = "pe_keylogger_strings"
        severity = 5
        description = "keylogging APIs: SetWindowsHookEx + GetAsyncKeyState/GetKeyboardState + GetForegroundWindow"
    strings:
        $h = "SetWindowsHookEx" ascii wide
        $k1 = "GetAsyncKeyState" ascii wide
        $k2 = "GetKeyboardState" ascii wide
        $f = "GetForegroundWindow" ascii wide
    condition:
        is_pe and $h and ($k1 or $k2) and $f
}

rule shadow_copy_deletion
{
    meta:
        id = "shadow_copy_deletion"
        severity = 8
        description = "deletes Volume Shadow Copies (ransomware)"
    strings:
        $v1 = /vssadmin(\.exe)?["']?\s+delete\s+shadows/ nocase ascii wide
        $v2 = /wmic(\.exe)?["']?\s+shadowcopy\s+delete/ nocase ascii wide
        $v3 = /bcdedit(\.exe)?["']?\s+\/set\s+\{default\}\s+recoveryenabled\s+no/ nocase ascii wide
    condition:
        any of them
}
