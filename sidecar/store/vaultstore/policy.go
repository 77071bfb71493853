package vaultstore

import (
	"fmt"
	"strings"
)

// Rule is one path of a Vault ACL policy.
type Rule struct {
	Path         string
	Capabilities []string
}

// SidecarPolicy is what `postern serve` needs under mount and prefix: read the index and the
// projects, list the projects and read their metadata, read and write tokens. It cannot change a
// project.
func SidecarPolicy(mount, prefix string) []Rule {
	m, p := strings.Trim(mount, "/"), strings.Trim(prefix, "/")
	return []Rule{
		{Path: m + "/data/" + p + "/index", Capabilities: []string{"read"}},
		{Path: m + "/data/" + p + "/projects/*", Capabilities: []string{"read"}},
		{Path: m + "/metadata/" + p + "/projects/*", Capabilities: []string{"read", "list"}},
		{Path: m + "/data/" + p + "/tokens/*", Capabilities: []string{"create", "read", "update"}},
	}
}

// AdminPolicy is what administrators' tools (`postern project ...`) need: everything the sidecar
// may do, and write and delete projects, the index and tokens.
func AdminPolicy(mount, prefix string) []Rule {
	m, p := strings.Trim(mount, "/"), strings.Trim(prefix, "/")
	return []Rule{
		{Path: m + "/data/" + p + "/index", Capabilities: []string{"create", "read", "update"}},
		{Path: m + "/data/" + p + "/projects/*", Capabilities: []string{"create", "read", "update"}},
		{Path: m + "/metadata/" + p + "/projects/*", Capabilities: []string{"read", "list"}},
		{Path: m + "/destroy/" + p + "/projects/*", Capabilities: []string{"update"}},
		{Path: m + "/data/" + p + "/tokens/*", Capabilities: []string{"create", "read", "update"}},
		{Path: m + "/metadata/" + p + "/tokens/*", Capabilities: []string{"read", "list"}},
		{Path: m + "/destroy/" + p + "/tokens/*", Capabilities: []string{"update"}},
	}
}

// HCL renders rules as a Vault policy document, for `vault policy write NAME -`.
func HCL(rules []Rule) string {
	var b strings.Builder
	for i, r := range rules {
		if i > 0 {
			b.WriteString("\n")
		}
		quoted := make([]string, len(r.Capabilities))
		for j, c := range r.Capabilities {
			quoted[j] = fmt.Sprintf("%q", c)
		}
		fmt.Fprintf(&b, "path %q {\n  capabilities = [%s]\n}\n", r.Path, strings.Join(quoted, ", "))
	}
	return b.String()
}
