package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// OrgOptions describe one client organisation's mail server.
type OrgOptions struct {
	// Name names the organisation ("client-a"); its domain is Name+".test" and its server's
	// hostname "mx."+Name+".test".
	Name string
	// Users are the SASL users (full addresses) and their passwords. Each also gets a mailbox.
	// Empty means one user, "noreply@<domain>", with the password "secret-<name>".
	Users map[string]string
}

// DefaultOrgs are the two organisations of the relay tests.
func DefaultOrgs() []OrgOptions {
	return []OrgOptions{{Name: "client-a"}, {Name: "client-b"}}
}

// DefaultMailboxes are the recipients' mailboxes (domain dest.test) besides the organisations'
// users.
func DefaultMailboxes() []string {
	return []string{"alice@dest.test", "bob@dest.test", "carol@dest.test"}
}

// UpstreamOptions configure StartUpstream. The zero value gives DefaultOrgs and DefaultMailboxes.
type UpstreamOptions struct {
	// Orgs are the client organisations, each with its own listener.
	Orgs []OrgOptions
	// Mailboxes are more addresses that accept mail.
	Mailboxes []string
	// CatchAll are domains whose every address, quoted local parts included, is delivered into
	// one mailbox: Upstream.CatchAll(domain).
	CatchAll []string
	// RecordRcpt makes the organisations' listeners log every RCPT command as it arrived, for
	// Upstream.RcptCommands.
	RecordRcpt bool
}

// Org is a client organisation's mail server: a listener of the upstream Postfix that requires
// STARTTLS and AUTH, and relays (here: delivers) only for its own users.
type Org struct {
	Name     string
	Domain   string
	Hostname string
	Port     int
	// Users maps SASL user names to passwords.
	Users map[string]string
}

// Addr is the listener's host:port.
func (o *Org) Addr() string { return fmt.Sprintf("127.0.0.1:%d", o.Port) }

// User returns the organisation's first user (sorted) and its password.
func (o *Org) User() (name, password string) {
	names := make([]string, 0, len(o.Users))
	for n := range o.Users {
		names = append(names, n)
	}
	sort.Strings(names)
	return names[0], o.Users[names[0]]
}

// Upstream is one Postfix instance that plays every mail server beyond Postern: one listener per
// client organisation (STARTTLS required, AUTH via Dovecot, distinct myhostname) and a "direct"
// listener (mx.direct.test, no TLS, no AUTH) for mail that does not go through Postern. All of
// them deliver into Maildirs under MailBase and reject unknown recipients with 550 5.1.1.
type Upstream struct {
	*Postfix
	CA      *CA
	Dovecot *Dovecot
	Orgs    []*Org
	// DirectPort is the port of the direct listener; DirectHostname its myhostname.
	DirectPort     int
	DirectHostname string
	// MailBase is virtual_mailbox_base: mailboxes live in MailBase/<domain>/<local part>/.
	MailBase string

	recordRcpt bool

	mu   sync.Mutex
	down map[string]bool
}

// CatchAll returns the Maildir that takes every address of a domain named in
// UpstreamOptions.CatchAll.
func (u *Upstream) CatchAll(domain string) Maildir {
	return Maildir(filepath.Join(u.MailBase, strings.ToLower(domain), catchAllMailbox))
}

// catchAllMailbox is the directory, under its domain's, of a catch-all mailbox.
const catchAllMailbox = "_catch-all"

// rcptFilter is an smtpd_command_filter that leaves every command as it is and matches RCPT
// only: smtpd logs each command it matches, "replacing command X with X".
const rcptFilter = "/^(RCPT[ \t].*)$/ $1\n"

// RcptCommands returns the RCPT commands the organisation's listener received, as they arrived,
// in order; UpstreamOptions.RecordRcpt must be set. Commands over 100 bytes are cut at 100
// (Postfix logs no more).
func (u *Upstream) RcptCommands(org string) []string {
	const marker = `: replacing command "`
	var out []string
	for _, l := range u.LogLines(regexp.MustCompile(`postfix/` + regexp.QuoteMeta(org) + `/smtpd\[\d+\]: .*` + regexp.QuoteMeta(marker))) {
		// The line ends with: replacing command "X" with "X"
		rest := l[strings.Index(l, marker)+len(marker):]
		n := (len(rest) - len(`" with "`) - len(`"`)) / 2
		if n < 0 || rest[n:n+len(`" with "`)] != `" with "` {
			continue
		}
		out = append(out, rest[:n])
	}
	return out
}

// DirectAddr is the direct listener's host:port.
func (u *Upstream) DirectAddr() string { return fmt.Sprintf("127.0.0.1:%d", u.DirectPort) }

// Org returns the named organisation, or nil.
func (u *Upstream) Org(name string) *Org {
	for _, o := range u.Orgs {
		if o.Name == name {
			return o
		}
	}
	return nil
}

// Mailbox returns the Maildir of an address hosted here.
func (u *Upstream) Mailbox(addr string) Maildir {
	local, domain, _ := strings.Cut(addr, "@")
	return Maildir(filepath.Join(u.MailBase, strings.ToLower(domain), local))
}

// WaitForMessage waits until the mailbox of addr holds a message matching pred (any when nil).
func (u *Upstream) WaitForMessage(ctx context.Context, addr string, pred func(*Message) bool) (*Message, error) {
	m, err := u.Mailbox(addr).WaitFor(ctx, pred)
	if err != nil {
		return nil, fmt.Errorf("waiting for mail to %s: %w", addr, err)
	}
	return m, nil
}

// Client returns an SMTP client for the organisation's listener: STARTTLS trusting the test CA,
// signed in as user.
func (u *Upstream) Client(org *Org, user string) Client {
	return Client{
		Addr:     org.Addr(),
		StartTLS: u.CA.ClientTLS("127.0.0.1"),
		Username: user,
		Password: org.Users[user],
	}
}

// StopOrg closes the organisation's listener (the server is "down": connections are refused) and
// waits until it refuses connections.
func (u *Upstream) StopOrg(ctx context.Context, name string) error {
	return u.setOrgDown(ctx, name, true)
}

// StartOrg opens the organisation's listener again and waits until it listens.
func (u *Upstream) StartOrg(ctx context.Context, name string) error {
	return u.setOrgDown(ctx, name, false)
}

func (u *Upstream) setOrgDown(ctx context.Context, name string, down bool) error {
	o := u.Org(name)
	if o == nil {
		return fmt.Errorf("no organisation %q", name)
	}
	u.mu.Lock()
	u.down[name] = down
	err := u.SetServices(u.services())
	u.mu.Unlock()
	if err != nil {
		return err
	}
	if err := u.Reload(ctx); err != nil {
		return err
	}
	if down {
		return waitRefusing(ctx, o.Addr())
	}
	return waitListening(ctx, o.Addr())
}

// services renders the listeners of master.cf; u.mu must be held.
func (u *Upstream) services() string {
	var b strings.Builder
	for _, o := range u.Orgs {
		if u.down[o.Name] {
			fmt.Fprintf(&b, "# %s is down.\n", o.Name)
			continue
		}
		fmt.Fprintf(&b, `# %[1]s: the organisation's own server. STARTTLS and AUTH are required, and only
# the organisation's users may send.
127.0.0.1:%[2]d inet n - n - - smtpd
  -o syslog_name=postfix/%[1]s
  -o myhostname=%[3]s
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=yes
  -o { smtpd_relay_restrictions = check_sasl_access texthash:%[4]s, reject }
`, o.Name, o.Port, o.Hostname, u.saslAccessFile(o))
		if u.recordRcpt {
			fmt.Fprintf(&b, "  -o smtpd_command_filter=regexp:%s\n", u.rcptFilterFile())
		}
	}
	fmt.Fprintf(&b, `# direct: where mail that does not go through Postern arrives. No TLS, no AUTH.
127.0.0.1:%[1]d inet n - n - - smtpd
  -o syslog_name=postfix/direct
  -o myhostname=%[2]s
`, u.DirectPort, u.DirectHostname)
	return b.String()
}

func (u *Upstream) saslAccessFile(o *Org) string {
	return filepath.Join(u.ConfigDir, "sasl-"+o.Name)
}

func (u *Upstream) rcptFilterFile() string {
	return filepath.Join(u.ConfigDir, "rcpt-filter")
}

// StartUpstream starts Dovecot (unless d is given) and the upstream Postfix in dir, and registers
// their stop as cleanups of t.
func StartUpstream(t T, dir string, ca *CA, d *Dovecot, opts UpstreamOptions) *Upstream {
	t.Helper()
	if len(opts.Orgs) == 0 {
		opts.Orgs = DefaultOrgs()
	}
	if opts.Mailboxes == nil {
		opts.Mailboxes = DefaultMailboxes()
	}
	if d == nil {
		d = StartDovecot(t, filepath.Join(dir, "dovecot"))
	}
	u, err := newUpstream(dir, ca, d, opts)
	if err != nil {
		t.Fatalf("setting up the upstream postfix: %v", err)
	}
	startPostfix(t, u.Postfix)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addrs := []string{u.DirectAddr()}
	for _, o := range u.Orgs {
		addrs = append(addrs, o.Addr())
	}
	for _, a := range addrs {
		if err := waitListening(ctx, a); err != nil {
			t.Fatalf("%v\n%s", err, u.Diagnose(ctx, ""))
		}
	}
	return u
}

func newUpstream(dir string, ca *CA, d *Dovecot, opts UpstreamOptions) (*Upstream, error) {
	p, err := newPostfix(filepath.Join(dir, "upstream"), "mx.direct.test")
	if err != nil {
		return nil, err
	}
	u := &Upstream{
		Postfix:        p,
		CA:             ca,
		Dovecot:        d,
		DirectHostname: "mx.direct.test",
		MailBase:       filepath.Join(p.Dir, "mail"),
		down:           map[string]bool{},
		recordRcpt:     opts.RecordRcpt,
	}
	if u.recordRcpt {
		if err := os.WriteFile(u.rcptFilterFile(), []byte(rcptFilter), 0o644); err != nil {
			return nil, fmt.Errorf("writing %s: %w", u.rcptFilterFile(), err)
		}
	}
	if u.DirectPort, err = FreePort(); err != nil {
		return nil, err
	}
	mailboxes := map[string]bool{}
	for _, m := range opts.Mailboxes {
		mailboxes[strings.ToLower(m)] = true
	}
	for _, oo := range opts.Orgs {
		o := &Org{
			Name:     oo.Name,
			Domain:   oo.Name + ".test",
			Hostname: "mx." + oo.Name + ".test",
			Users:    map[string]string{},
		}
		for n, pw := range oo.Users {
			o.Users[n] = pw
		}
		if len(o.Users) == 0 {
			o.Users["noreply@"+o.Domain] = "secret-" + o.Name
		}
		if o.Port, err = FreePort(); err != nil {
			return nil, err
		}
		var access strings.Builder
		for n, pw := range o.Users {
			if err := d.SetUser(n, pw); err != nil {
				return nil, err
			}
			mailboxes[strings.ToLower(n)] = true
			fmt.Fprintf(&access, "%s OK\n", n)
		}
		if err := os.WriteFile(u.saslAccessFile(o), []byte(access.String()), 0o644); err != nil {
			return nil, fmt.Errorf("writing %s: %w", u.saslAccessFile(o), err)
		}
		u.Orgs = append(u.Orgs, o)
	}

	domains := map[string]bool{}
	var vmailbox strings.Builder
	addrs := make([]string, 0, len(mailboxes))
	for a := range mailboxes {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	for _, a := range addrs {
		local, domain, ok := strings.Cut(a, "@")
		if !ok {
			return nil, fmt.Errorf("mailbox %q is not an address", a)
		}
		domains[domain] = true
		fmt.Fprintf(&vmailbox, "%s %s/%s/\n", a, domain, local)
	}
	for _, d := range opts.CatchAll {
		d = strings.ToLower(d)
		domains[d] = true
		fmt.Fprintf(&vmailbox, "@%s %s/%s/\n", d, d, catchAllMailbox)
	}
	domainList := make([]string, 0, len(domains))
	for dom := range domains {
		domainList = append(domainList, dom)
	}
	sort.Strings(domainList)
	vmailboxFile := filepath.Join(p.ConfigDir, "vmailbox")
	if err := os.WriteFile(vmailboxFile, []byte(vmailbox.String()), 0o644); err != nil {
		return nil, fmt.Errorf("writing %s: %w", vmailboxFile, err)
	}
	if err := mkdirs(u.MailBase); err != nil {
		return nil, err
	}
	if err := chownTo(u.MailBase, "postfix"); err != nil {
		return nil, err
	}
	uid, gid, err := lookupIDs("postfix")
	if err != nil {
		return nil, err
	}
	err = p.AppendMain(fmt.Sprintf(`# The mail servers beyond Postern: deliver into Maildirs, reject unknown users at RCPT.
virtual_mailbox_domains = %[1]s
virtual_mailbox_maps = texthash:%[2]s
virtual_mailbox_base = %[3]s
virtual_minimum_uid = 1
virtual_uid_maps = static:%[4]d
virtual_gid_maps = static:%[5]d
smtpd_relay_restrictions = reject_unauth_destination
smtpd_tls_chain_files = %[6]s, %[7]s
smtpd_tls_security_level = none
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = %[8]s
smtpd_sasl_authenticated_header = yes
`, strings.Join(domainList, " "), vmailboxFile, u.MailBase, uid, gid,
		ca.KeyFile, ca.CertFile, d.AuthSocket))
	if err != nil {
		return nil, err
	}
	if err := p.SetServices(u.services()); err != nil {
		return nil, err
	}
	if err := p.settle(); err != nil {
		return nil, err
	}
	return u, nil
}
