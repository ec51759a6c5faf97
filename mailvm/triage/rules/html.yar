// HTML smuggling: the page builds a file from a script blob and makes the browser
// save it (msSaveOrOpenBlob, or createObjectURL + <a download>), usually from base64.

rule html_smuggling_blob
{
    meta:
        id = "html_smuggling_blob"
        severity = 7
        description = "HTML smuggling: Blob + msSaveOrOpenBlob/createObjectURL + download, from base64"
    strings:
        $blob = /new\s+Blob\s*\(/ nocase
        $save1 = "msSaveOrOpenBlob" nocase
        $save2 = "msSaveBlob" nocase
        $save3 = "createObjectURL" nocase
        $dl1 = /\.download\s*=/ nocase
        $dl2 = /\bdownload\s*=\s*["']/ nocase
        $dl3 = /setAttribute\s*\(\s*["']download/ nocase
        $b64a = /\batob\s*\(/ nocase
        $b64b = "base64" nocase
        $b64c = "Uint8Array" nocase
    condition:
        $blob and any of ($save*) and (any of ($dl*) or $save1 or $save2) and any of ($b64*)
}
