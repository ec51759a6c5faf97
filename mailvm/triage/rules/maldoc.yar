// Office document indicators visible in the raw bytes: uncompressed or partly
// compressed VBA (VBA compression keeps most words literal), flat XML, MHT,
// .bas exports; ActiveX controls abused by exploits in OLE files.
// The office analyzers (oletools) decompress and parse; these rules are a second,
// independent layer.

rule maldoc_autoexec_shell
{
    meta:
        id = "maldoc_autoexec_shell"
        severity = 8
        description = "VBA that runs on open and starts a shell or PowerShell"
    strings:
        $vba1 = "Attribute VB_" nocase
        $vba2 = "_VBA_PROJECT" wide
        $vba3 = "vbaProject" nocase
        $vba4 = "VBA" wide
        $auto1 = "AutoOpen" nocase
        $auto2 = "Auto_Open" nocase
        $auto3 = "Document_Open" nocase
        $auto4 = "Workbook_Open" nocase
        $auto5 = "AutoExec" nocase
        $auto6 = "Document_Close" nocase
        $auto7 = "AutoClose" nocase
        $auto8 = "Auto_Close" nocase
        $auto9 = "Workbook_Activate" nocase
        $exec1 = "WScript.Shell" nocase
        $exec2 = "powershell" nocase
        $exec3 = "Shell.Application" nocase
        $exec4 = "ShellExecute" nocase
        $exec5 = /\bShell\s*\(/ nocase
        $exec6 = /cmd(\.exe)?\s+\/[ck]\s/ nocase
        $exec7 = "Win32_Process" nocase
    condition:
        any of ($vba*) and any of ($auto*) and any of ($exec*)
}

rule maldoc_download_exec
{
    meta:
        id = "maldoc_download_exec"
        severity = 7
        description = "VBA that downloads a file (URLDownloadToFile, XMLHTTP + ADODB.Stream)"
    strings:
        $vba1 = "Attribute VB_" nocase
        $vba2 = "_VBA_PROJECT" wide
        $vba3 = "vbaProject" nocase
        $vba4 = "VBA" wide
        $dl1 = "URLDownloadToFile" nocase
        $http1 = "XMLHTTP" nocase
        $http2 = "WinHttpRequest" nocase
        $save1 = "ADODB.Stream" nocase
        $save2 = "SaveToFile" nocase
    condition:
        any of ($vba*) and ($dl1 or (any of ($http*) and all of ($save*)))
}

rule maldoc_activex_exploit_control
{
    meta:
        id = "maldoc_activex_control"
        severity = 5
        description = "OLE document embeds an ActiveX control abused by exploits (InkPicture, Flash, MSCOMCTL)"
    strings:
        $inkpicture = { 34 1A 7C 93 1D 15 10 46 9C A6 A8 CC 9B DB 5D 83 }
        $flash = { 6E DB 7C D2 6D AE CF 11 96 B8 44 45 53 54 00 00 }
        $listview = { 4B F0 D1 BD 8B 85 D1 11 B1 6A 00 C0 F0 28 36 28 }
        $treeview = { B6 90 41 C7 89 85 D1 11 B1 6A 00 C0 F0 28 36 28 }
        $listview2 = { E0 F5 6B 99 44 80 50 46 AD EB 0B 01 39 14 E9 9C }
        $toolbar = { E6 3F 83 66 83 85 D1 11 B1 6A 00 C0 F0 28 36 28 }
        $tabstrip = { 96 65 FB 1E 7C 85 D1 11 B1 6A 00 C0 F0 28 36 28 }
        $flash_name = "ShockwaveFlash.ShockwaveFlash" ascii wide nocase
    condition:
        uint32be(0) == 0xD0CF11E0 and any of them
}
