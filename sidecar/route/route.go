// Package route owns the one decision of which project serves an envelope sender. It is pure: no I/O,
// no clock, no logging, so it can be fuzzed and shared by the socketmap server, the LMTP/SMTP server
// and the milter.
//
// The flow:
//
//  1. New takes every project, enabled or disabled (a disabled project still routes, so its mail is
//     deferred by Postern with a 4xx and waits in Postfix's queue instead of leaving some other way),
//     and indexes its senders: full addresses and "@domain" patterns.
//  2. Two projects claiming the same address or the same @domain is a conflict. New reports each one
//     naming both projects; the project whose name sorts first keeps the sender, so the outcome does
//     not depend on the order the store returned the projects in.
//  3. Lookup compares the sender's full address first (case-insensitively, local part included), then
//     its domain against the @domain patterns. The empty sender (bounces) and anything that is not
//     local@domain match nothing.
//  4. ServesDomain and Domains say which domains appear in any project's senders, for checks that
//     only need to know whether a domain is routed through Postern at all.
package route

import (
	"fmt"
	"slices"
	"strings"

	"github.com/postern/postern/sidecar/project"
)

// Table maps envelope senders to project names. A Table is immutable once built and safe for
// concurrent use. The zero value and a nil *Table route nothing.
type Table struct {
	// exact maps a lower-cased "local@domain" to a project name.
	exact map[string]string
	// domain maps a lower-cased domain (from an "@domain" pattern) to a project name.
	domain map[string]string
	// domains holds every domain named by any sender, exact or pattern, sorted.
	domains []string
}

// ConflictError reports a sender claimed by two projects. First keeps it; Second loses it.
type ConflictError struct {
	// Sender is the address or "@domain" in its normalised (lower-case) form.
	Sender string
	First  string
	Second string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("sender %q is claimed by projects %q and %q: %q serves it", e.Sender, e.First, e.Second, e.First)
}

// New builds a table from projects, whatever their Enabled flag. It always returns a usable table; the
// errors list every conflict (as *ConflictError) and every sender that is not an address or @domain.
func New(projects []project.Project) (*Table, []error) {
	sorted := slices.Clone(projects)
	slices.SortStableFunc(sorted, func(a, b project.Project) int { return strings.Compare(a.Name, b.Name) })

	t := &Table{exact: map[string]string{}, domain: map[string]string{}}
	seenDomain := map[string]bool{}
	var errs []error
	for _, p := range sorted {
		for _, s := range p.Senders {
			key, isDomain, ok := normalizePattern(s)
			if !ok {
				errs = append(errs, fmt.Errorf("project %q: sender %q is neither local@domain nor @domain: ignored", p.Name, s))
				continue
			}
			index := t.exact
			if isDomain {
				index = t.domain
			}
			if owner, taken := index[key]; taken {
				if owner != p.Name {
					errs = append(errs, &ConflictError{Sender: displayKey(key, isDomain), First: owner, Second: p.Name})
				}
				continue
			}
			index[key] = p.Name
			d := key
			if !isDomain {
				d = key[strings.LastIndexByte(key, '@')+1:]
			}
			if !seenDomain[d] {
				seenDomain[d] = true
				t.domains = append(t.domains, d)
			}
		}
	}
	slices.Sort(t.domains)
	return t, errs
}

// Lookup returns the name of the project serving sender: an exact address match first, then the
// sender's @domain. The empty sender and malformed input never match.
func (t *Table) Lookup(sender string) (name string, ok bool) {
	if t == nil {
		return "", false
	}
	local, domain, valid := splitAddress(sender)
	if !valid {
		return "", false
	}
	if name, ok := t.exact[strings.ToLower(local)+"@"+domain]; ok {
		return name, true
	}
	name, ok = t.domain[domain]
	return name, ok
}

// Domains returns every domain named by any project's senders, lower-cased and sorted. The caller
// may keep and modify the slice.
func (t *Table) Domains() []string {
	if t == nil {
		return nil
	}
	return slices.Clone(t.domains)
}

// ServesDomain reports whether any project's senders name domain, as an address or as @domain.
func (t *Table) ServesDomain(domain string) bool {
	if t == nil {
		return false
	}
	d, ok := normalizeDomain(domain)
	if !ok {
		return false
	}
	_, found := slices.BinarySearch(t.domains, d)
	return found
}

// Len returns the number of senders (addresses and @domains) the table routes.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return len(t.exact) + len(t.domain)
}

// normalizePattern turns a configured sender into its index key: "local@domain" lower-cased, or, for
// "@domain", the lower-cased domain with isDomain set.
func normalizePattern(s string) (key string, isDomain, ok bool) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "@") {
		d, ok := normalizeDomain(s[1:])
		return d, true, ok
	}
	local, domain, ok := splitAddress(s)
	if !ok {
		return "", false, false
	}
	return strings.ToLower(local) + "@" + domain, false, true
}

// splitAddress splits local@domain at the last '@', returning the domain normalised. It rejects an
// empty local part or domain, an unquoted '@' in the local part, and anything with blanks, angle
// brackets, control characters or invalid UTF-8.
func splitAddress(s string) (local, domain string, ok bool) {
	at := strings.LastIndexByte(s, '@')
	if at <= 0 {
		return "", "", false
	}
	local = s[:at]
	if strings.ContainsFunc(local, badRune) {
		return "", "", false
	}
	if strings.ContainsRune(local, '@') && !(len(local) >= 2 && local[0] == '"' && local[len(local)-1] == '"') {
		return "", "", false // an '@' in the local part must be quoted
	}
	domain, ok = normalizeDomain(s[at+1:])
	return local, domain, ok
}

// normalizeDomain lower-cases a domain and drops one trailing dot. It rejects empty domains, domains
// with '@', blanks, angle brackets or control characters, and empty labels.
func normalizeDomain(d string) (string, bool) {
	d = strings.TrimSuffix(d, ".")
	if d == "" || len(d) > 255 || strings.ContainsFunc(d, func(r rune) bool { return r == '@' || badRune(r) }) {
		return "", false
	}
	if strings.HasPrefix(d, ".") || strings.Contains(d, "..") {
		return "", false
	}
	return strings.ToLower(d), true
}

func badRune(r rune) bool {
	return r <= ' ' || r == 0x7f || r == '<' || r == '>' || r == '\uFFFD'
}

func displayKey(key string, isDomain bool) string {
	if isDomain {
		return "@" + key
	}
	return key
}
