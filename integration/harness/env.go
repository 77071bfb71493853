package harness

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Options configure Start. The zero value starts everything but Postern.
type Options struct {
	// PosternBin, when set, is the postern binary to start; empty leaves Postern out (the front
	// Postfix is still configured for it, so its socketmap lookups fail).
	PosternBin string
	// Upstream configures the organisations and mailboxes.
	Upstream UpstreamOptions
	// ContribDir overrides where the contrib main.cf and master.cf are read from.
	ContribDir string
	// FrontMain is appended to the front Postfix's main.cf after the contrib snippet. It must not
	// repeat a parameter the snippet sets: postconf warns about that, and StartFront fails.
	FrontMain string
	// LogLevel is Postern's log level; empty means debug.
	LogLevel string
	// PosternConfig is YAML appended to Postern's generated config.
	PosternConfig string
	// PosternStore is the YAML of Postern's store section (PosternOptions.Store, e.g. from
	// (*Vault).StoreYAML); empty means the embedded store.
	PosternStore string
	// SMTP has Postfix deliver to Postern over SMTP on loopback (contrib master-smtp.cf) instead of
	// LMTP (master.cf).
	SMTP bool
	// Milter makes Postern serve its milter (PosternOptions.Milter) and the front Postfix load
	// contrib main-milter.cf verbatim after main.cf (FrontOptions.Milter).
	Milter bool
	// SocketmapTCP has Postern's socketmap listen on loopback TCP (PosternOptions.SocketmapTCP).
	SocketmapTCP bool
}

// Env is one complete set of real parts in one temporary directory.
type Env struct {
	// Dir holds everything.
	Dir      string
	CA       *CA
	Dovecot  *Dovecot
	Upstream *Upstream
	Front    *Front
	// Postern is configured even without a binary (its Dir is the front's postern_run_dir); it
	// runs only when Options.PosternBin was set.
	Postern *Postern
	// Secrets holds every secret of the environment: the organisations' passwords, Postern's
	// read token and store key, and whatever a test adds (Vault tokens, client secrets, issued
	// tokens). At cleanup, once everything has stopped, every log is searched for them and the
	// test fails naming each line that holds one.
	Secrets *Secrets
}

// scanForSecrets fails t for every line of the environment's logs that holds one of its secrets.
func (e *Env) scanForSecrets(t T) {
	var files []string
	if e.Postern != nil {
		files = append(files, e.Postern.LogFile())
	}
	if e.Front != nil {
		files = append(files, e.Front.LogFile)
	}
	if e.Upstream != nil {
		files = append(files, e.Upstream.LogFile)
	}
	if e.Dovecot != nil {
		files = append(files, e.Dovecot.LogFile)
	}
	leaks := e.Secrets.ScanFiles(files...)
	if len(leaks) == 0 {
		return
	}
	var b strings.Builder
	for _, l := range leaks {
		fmt.Fprintf(&b, "\n  %s", l)
	}
	msg := fmt.Sprintf("%d log lines hold a secret:%s", len(leaks), b.String())
	if et, ok := t.(interface{ Errorf(string, ...any) }); ok {
		et.Errorf("%s", msg)
		return
	}
	t.Fatalf("%s", msg)
}

// Start brings up the CA, Dovecot, the upstream Postfix, Postern (with Options.PosternBin) and
// the front Postfix, and registers their stop as cleanups of t.
func Start(t T, opts Options) *Env {
	t.Helper()
	Require(t)
	e := &Env{Dir: TempDir(t), Secrets: &Secrets{}}
	// Registered before the parts start, so it runs after they have stopped and written
	// their last lines (and before the directory is removed).
	t.Cleanup(func() { e.scanForSecrets(t) })
	var err error
	orgs := opts.Upstream.Orgs
	if len(orgs) == 0 {
		orgs = DefaultOrgs()
	}
	names := []string{"mx.direct.test"}
	for _, o := range orgs {
		names = append(names, "mx."+o.Name+".test")
	}
	e.CA, err = NewCA(filepath.Join(e.Dir, "ca"), names...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	started := time.Now()
	e.Dovecot = StartDovecot(t, filepath.Join(e.Dir, "dovecot"))
	e.Upstream = StartUpstream(t, e.Dir, e.CA, e.Dovecot, opts.Upstream)
	upstreamDone := time.Now()
	e.Postern, err = NewPostern(PosternOptions{Bin: opts.PosternBin, Dir: filepath.Join(e.Dir, "postern"),
		LogLevel: opts.LogLevel, SMTP: opts.SMTP, ExtraConfig: opts.PosternConfig, Store: opts.PosternStore, Milter: opts.Milter,
		SocketmapTCP: opts.SocketmapTCP})
	if err != nil {
		t.Fatalf("%v", err)
	}
	for _, o := range e.Upstream.Orgs {
		for user, pw := range o.Users {
			e.Secrets.Add("password of "+user, pw)
		}
	}
	e.Secrets.Add("admin read token", e.Postern.ReadToken)
	e.Secrets.AddFile("file store key", filepath.Join(e.Postern.Dir, "store.key"))
	if opts.PosternBin != "" {
		StartPostern(t, e.Postern)
	}
	posternDone := time.Now()
	e.Front = StartFront(t, e.Dir, FrontOptions{
		ContribDir: opts.ContribDir,
		MasterFile: map[bool]string{false: "master.cf", true: "master-smtp.cf"}[opts.SMTP],
		RunDir:     e.Postern.Dir,
		RelayAddr:  e.Upstream.DirectAddr(),
		Main:       opts.FrontMain,
		Milter:     opts.Milter,
	})
	t.Logf("harness up in %s (dovecot+upstream %s, postern %s, front %s) in %s",
		time.Since(started).Round(time.Millisecond), upstreamDone.Sub(started).Round(time.Millisecond),
		posternDone.Sub(upstreamDone).Round(time.Millisecond), time.Since(posternDone).Round(time.Millisecond), e.Dir)
	return e
}

// ProjectOptions describe a project to add with `postern project add`.
type ProjectOptions struct {
	// Name of the project.
	Name string
	// Org is the organisation whose server the project uses.
	Org string
	// User signs in upstream; empty means the organisation's first user.
	User string
	// Password for User; empty means the organisation's password for User.
	Password string
	// Senders routed through the project; empty means User.
	Senders []string
	// SendAs are the From addresses allowed; empty leaves the flag out.
	SendAs []string
	// Port replaces the organisation's port (to point the project at another server on
	// 127.0.0.1); zero keeps it.
	Port int
	// TLS is the --tls mode; empty means starttls.
	TLS string
}

// AddProject adds a project with `postern project add` (STARTTLS to the organisation's listener,
// trusting the test CA) and waits until Postern routes its senders.
func (e *Env) AddProject(ctx context.Context, po ProjectOptions) error {
	args, password, senders, err := e.ProjectAddArgs(po)
	if err != nil {
		return err
	}
	if _, err := e.Postern.CLI(ctx, password+"\n", args...); err != nil {
		return fmt.Errorf("adding project %s: %w", po.Name, err)
	}
	for _, s := range senders {
		if err := e.Postern.WaitRouted(ctx, s, true); err != nil {
			return fmt.Errorf("adding project %s: %w", po.Name, err)
		}
	}
	return nil
}

// ProjectAddArgs returns the arguments of `postern project add` for po (without --config), the
// password to feed to --password-stdin, and the senders the project routes.
func (e *Env) ProjectAddArgs(po ProjectOptions) (args []string, password string, senders []string, err error) {
	o := e.Upstream.Org(po.Org)
	if o == nil {
		return nil, "", nil, fmt.Errorf("adding project %s: no organisation %q", po.Name, po.Org)
	}
	if po.User == "" {
		po.User, _ = o.User()
	}
	if po.Password == "" {
		po.Password = o.Users[po.User]
	}
	if len(po.Senders) == 0 {
		po.Senders = []string{po.User}
	}
	if po.Port == 0 {
		po.Port = o.Port
	}
	if po.TLS == "" {
		po.TLS = "starttls"
	}
	args = []string{"project", "add"}
	for _, s := range po.Senders {
		args = append(args, "--sender", s)
	}
	for _, s := range po.SendAs {
		args = append(args, "--send-as", s)
	}
	args = append(args,
		"--host", "127.0.0.1",
		"--port", strconv.Itoa(po.Port),
		"--tls", po.TLS,
		"--username", po.User,
		"--password-stdin",
		"--ca-file", e.CA.CAFile,
		po.Name)
	return args, po.Password, po.Senders, nil
}

// SetProjectPassword changes a project's password with `postern project update --password-stdin`.
func (e *Env) SetProjectPassword(ctx context.Context, name, password string) error {
	if _, err := e.Postern.CLI(ctx, password+"\n", "project", "update", "--password-stdin", name); err != nil {
		return fmt.Errorf("changing the password of project %s: %w", name, err)
	}
	return nil
}
