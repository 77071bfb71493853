package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// FrontOptions configure StartFront.
type FrontOptions struct {
	// ContribDir holds main.cf and master.cf, appended verbatim. Empty means
	// <module root>/contrib/postfix.
	ContribDir string
	// MasterFile is the contrib file with the postern service; empty means "master.cf" (LMTP),
	// "master-smtp.cf" is the SMTP variant.
	MasterFile string
	// RunDir replaces postern_run_dir: the directory of Postern's lmtp.sock and socketmap.sock.
	RunDir string
	// RelayAddr is host:port of the relayhost for mail not routed through Postern (the upstream's
	// direct listener).
	RelayAddr string
	// Main is appended to main.cf after the contrib snippet (before postern_run_dir is set). It
	// must not repeat a parameter the snippet sets: postconf warns about that.
	Main string
	// AllowWarnings starts the instance even when postconf warns about its configuration.
	AllowWarnings bool
	// Milter appends the contrib main-milter.cf (Postern's milter) verbatim after main.cf, before
	// Main.
	Milter bool
}

// Front is the operator's Postfix: a loopback smtpd for the test to submit to, relayhost set to
// the direct destination, and contrib/postfix/main.cf and master.cf appended verbatim.
type Front struct {
	*Postfix
	// SMTPPort is the submission listener's port (no TLS, no AUTH; mynetworks is 127.0.0.0/8).
	SMTPPort int
}

// SMTPAddr is the submission listener's host:port.
func (f *Front) SMTPAddr() string { return fmt.Sprintf("127.0.0.1:%d", f.SMTPPort) }

// Submit sends m to the front Postfix and returns its reply (with the queue ID).
func (f *Front) Submit(ctx context.Context, m *Mail) (Sent, error) {
	return Client{Addr: f.SMTPAddr(), HeloName: "app.test"}.Send(ctx, m)
}

// StartFront starts the front Postfix in dir and registers its stop as a cleanup of t. It fails t
// when postconf warns about the configuration (a contrib parameter Postfix does not know is a
// bug), unless opts.AllowWarnings.
func StartFront(t T, dir string, opts FrontOptions) *Front {
	t.Helper()
	requirePrereqs(t, SkipEnv, checkMailPrograms)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f, err := newFront(ctx, dir, opts)
	if err != nil {
		t.Fatalf("setting up the front postfix: %v", err)
	}
	if !opts.AllowWarnings {
		w, err := f.ConfigWarnings(ctx)
		if err != nil {
			t.Fatalf("%v", err)
		}
		if len(w) > 0 {
			t.Fatalf("postconf warns about the front postfix's configuration (%s):\n%s",
				f.ConfigDir, strings.Join(w, "\n"))
		}
	}
	startPostfix(t, f.Postfix)
	if err := waitListening(ctx, f.SMTPAddr()); err != nil {
		t.Fatalf("%v\n%s", err, f.Diagnose(ctx, ""))
	}
	return f
}

func newFront(ctx context.Context, dir string, opts FrontOptions) (*Front, error) {
	if opts.ContribDir == "" {
		root, err := ModuleRoot()
		if err != nil {
			return nil, err
		}
		opts.ContribDir = filepath.Join(root, "contrib", "postfix")
	}
	if opts.RunDir == "" || opts.RelayAddr == "" {
		return nil, fmt.Errorf("front postfix: RunDir and RelayAddr are required")
	}
	contribMain, err := os.ReadFile(filepath.Join(opts.ContribDir, "main.cf"))
	if err != nil {
		return nil, fmt.Errorf("reading the contrib main.cf: %w", err)
	}
	if opts.MasterFile == "" {
		opts.MasterFile = "master.cf"
	}
	contribMaster, err := os.ReadFile(filepath.Join(opts.ContribDir, opts.MasterFile))
	if err != nil {
		return nil, fmt.Errorf("reading the contrib %s: %w", opts.MasterFile, err)
	}
	p, err := newPostfix(filepath.Join(dir, "front"), "front.test")
	if err != nil {
		return nil, err
	}
	f := &Front{Postfix: p}
	if f.SMTPPort, err = FreePort(); err != nil {
		return nil, err
	}
	relayHost, relayPort, err := net.SplitHostPort(opts.RelayAddr)
	if err != nil {
		return nil, fmt.Errorf("front postfix: RelayAddr: %w", err)
	}
	err = p.AppendMain(fmt.Sprintf(`# The operator's Postfix: mail of senders Postern does not route goes to the relayhost.
relayhost = [%s]:%s
smtp_tls_security_level = none
smtpd_relay_restrictions = permit_mynetworks, reject
`, relayHost, relayPort))
	if err != nil {
		return nil, err
	}
	if err := p.AppendMain(string(contribMain)); err != nil {
		return nil, err
	}
	if opts.Milter {
		milterMain, err := os.ReadFile(filepath.Join(opts.ContribDir, MilterMainFile))
		if err != nil {
			return nil, fmt.Errorf("reading the contrib %s: %w", MilterMainFile, err)
		}
		if err := p.AppendMain(string(milterMain)); err != nil {
			return nil, err
		}
	}
	if opts.Main != "" {
		if err := p.AppendMain(opts.Main); err != nil {
			return nil, err
		}
	}
	if err := p.Postconf(ctx, "postern_run_dir="+opts.RunDir); err != nil {
		return nil, err
	}
	services := fmt.Sprintf(`# Submission by the tests (what the application would use).
127.0.0.1:%d inet n - n - - smtpd
  -o syslog_name=postfix/submit
`, f.SMTPPort) + string(contribMaster)
	if err := p.SetServices(services); err != nil {
		return nil, err
	}
	return f, nil
}
