package sidecar

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/advice"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/health"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/upstream"
)

// CheckOptions configure Check.
type CheckOptions struct {
	// Names are the projects to check; empty checks every enabled project.
	Names []string
	// JSON writes one JSON document (CheckReport) instead of text.
	JSON bool
	// Concurrency is how many projects are checked at once. Zero means DefaultCheckConcurrency.
	Concurrency int
	// Progress receives a progress line, rewritten in place ("\r"), while the checks run: a
	// terminal's stderr. Nil: none.
	Progress io.Writer
	// StepTimeout bounds each step: reading the projects, and each project's credential and
	// sign-in. Zero means DefaultCheckStepTimeout.
	StepTimeout time.Duration
}

// Defaults of CheckOptions.
const (
	DefaultCheckConcurrency = 8
	DefaultCheckStepTimeout = time.Minute
)

// CheckResult is one project's check.
type CheckResult struct {
	Project  string `json:"project"`
	Auth     string `json:"auth"`
	Upstream string `json:"upstream"`
	// Status is ok, failed, disabled or removed (the last two are not checked).
	Status string `json:"status"`
	// Reason classifies a failure as the health model does (package health): credential_refused,
	// needs_sign_in, upstream_down, ...
	Reason       string  `json:"reason,omitempty"`
	Error        string  `json:"error,omitempty"`
	Next         string  `json:"next,omitempty"`
	Seconds      float64 `json:"seconds,omitempty"`
	MaxSizeBytes int64   `json:"max_size_bytes,omitempty"`
}

// CheckReport is what `postern check --json` writes.
type CheckReport struct {
	Projects []CheckResult `json:"projects"`
	Checked  int           `json:"checked"`
	Failed   int           `json:"failed"`
}

// Check is `postern check`: for each enabled project (or the ones named), it gets the credential
// as a delivery would (an OAuth token may be refreshed and written back) and signs in upstream on
// a new connection, then says what works and, for what does not, what to do next. Projects are
// checked o.Concurrency at a time, each step within o.StepTimeout, so that a hung upstream holds
// up neither the others nor the end. It returns an error when a project failed.
func Check(ctx context.Context, cfg *config.Config, log *slog.Logger, w io.Writer, o CheckOptions) error {
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultCheckConcurrency
	}
	if o.StepTimeout <= 0 {
		o.StepTimeout = DefaultCheckStepTimeout
	}
	st, _, err := OpenStore(ctx, cfg, log.With("component", "store"), StoreOpen)
	if err != nil {
		return err
	}
	defer st.Close()
	readCtx, cancel := context.WithTimeout(ctx, o.StepTimeout)
	projects, err := st.Projects(readCtx)
	cancel()
	if err != nil {
		return fmt.Errorf("reading the projects: %w", err)
	}
	if !o.JSON {
		fmt.Fprintf(w, "store: %d projects\n", len(projects))
	}
	if len(o.Names) > 0 {
		var chosen []project.Project
		for _, n := range o.Names {
			i := slices.IndexFunc(projects, func(p project.Project) bool { return p.Name == n })
			if i < 0 {
				return explainNotFound(store.ErrNotFound, n)
			}
			chosen = append(chosen, projects[i])
		}
		projects = chosen
	}

	parts := NewParts(ctx, cfg, st, log)
	defer parts.Close()

	results := make([]CheckResult, len(projects))
	var done, failed atomic.Int64
	progress := func() {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, "\rchecked %d of %d projects, %d failed ", done.Load(), len(projects), failed.Load())
		}
	}
	var wg sync.WaitGroup
	var progressMu sync.Mutex
	slots := make(chan struct{}, o.Concurrency)
	progress()
	for i, p := range projects {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			results[i] = checkOne(ctx, parts, p, o.StepTimeout)
			if results[i].Status == "failed" {
				failed.Add(1)
			}
			done.Add(1)
			progressMu.Lock()
			progress()
			progressMu.Unlock()
		})
	}
	wg.Wait()
	if o.Progress != nil && len(projects) > 0 {
		fmt.Fprintln(o.Progress)
	}

	report := CheckReport{Projects: results, Failed: int(failed.Load())}
	for _, r := range results {
		if r.Status == "ok" || r.Status == "failed" {
			report.Checked++
		}
	}
	if o.JSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(report); err != nil {
			return err
		}
	} else {
		for _, r := range results {
			writeCheckResult(w, r)
		}
	}
	if report.Failed > 0 {
		return fmt.Errorf("%d of %d projects cannot deliver", report.Failed, len(projects))
	}
	return nil
}

// checkOne checks one project within timeout.
func checkOne(ctx context.Context, parts *Parts, p project.Project, timeout time.Duration) CheckResult {
	r := CheckResult{Project: p.Name, Auth: authLabel(p), Upstream: p.Upstream.Address()}
	switch {
	case p.IsRemoved():
		r.Status = "removed"
		return r
	case !p.Enabled:
		r.Status = "disabled"
		return r
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	conn, err := signIn(ctx, parts.Credentials, parts.Pools, p)
	r.Seconds = time.Since(start).Round(time.Millisecond).Seconds()
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer within %s: %w", timeout, err)
		}
		r.Status, r.Reason, r.Error, r.Next = "failed", string(health.Classify(err)), err.Error(), nextStep(p, err)
		return r
	}
	r.Status, r.MaxSizeBytes = "ok", conn.MaxSize()
	conn.Release() // QUIT when the pools close
	return r
}

// writeCheckResult writes r as text.
func writeCheckResult(w io.Writer, r CheckResult) {
	switch r.Status {
	case "removed":
		fmt.Fprintf(w, "%s: removed, not checked (postern project purge %s forgets it)\n", r.Project, r.Project)
		return
	case "disabled":
		fmt.Fprintf(w, "%s: disabled, not checked (postern project enable %s)\n", r.Project, r.Project)
		return
	}
	fmt.Fprintf(w, "%s: %s upstream %s ... ", r.Project, r.Auth, r.Upstream)
	if r.Status == "failed" {
		fmt.Fprintf(w, "FAILED\n  %s\n  next: %s\n", r.Error, r.Next)
		return
	}
	fmt.Fprintf(w, "ok (signed in in %s", time.Duration(r.Seconds*float64(time.Second)))
	if r.MaxSizeBytes > 0 {
		fmt.Fprintf(w, ", messages up to %d bytes", r.MaxSizeBytes)
	}
	fmt.Fprintln(w, ")")
}

// TestMessage is what `postern send-test` sends.
type TestMessage struct {
	Project string
	From    string // empty: the project's first sender address
	To      string
}

// explainNotFound names the fix for a project that does not exist.
func explainNotFound(err error, name string) error {
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no project named %s ('postern project list' shows them)", name)
	}
	return err
}

// SendTest is `postern send-test`: one short message from the project's sender to m.To through
// the project's upstream, directly (not through Postfix), with the upstream's reply printed.
func SendTest(ctx context.Context, cfg *config.Config, log *slog.Logger, w io.Writer, m TestMessage) error {
	st, _, err := OpenStore(ctx, cfg, log.With("component", "store"), StoreOpen)
	if err != nil {
		return err
	}
	defer st.Close()
	p, err := st.Project(ctx, m.Project)
	if err != nil {
		return explainNotFound(err, m.Project)
	}
	from := m.From
	if from == "" {
		i := slices.IndexFunc(p.Senders, func(s string) bool { return !strings.HasPrefix(s, "@") })
		if i < 0 {
			return fmt.Errorf("project %s serves whole domains only: give the sender with --from", p.Name)
		}
		from = p.Senders[i]
	}
	if !p.MaySendAs(from) {
		return fmt.Errorf("project %s may not send as %s (its senders: %s)", p.Name, from, strings.Join(p.SendAsList(), ", "))
	}

	parts := NewParts(ctx, cfg, st, log)
	defer parts.Close()

	fmt.Fprintf(w, "%s: %s upstream %s ... ", p.Name, authLabel(p), p.Upstream.Address())
	conn, err := signIn(ctx, parts.Credentials, parts.Pools, p)
	if err != nil {
		fmt.Fprintf(w, "FAILED\n")
		return fmt.Errorf("%w\n  next: %s", err, nextStep(p, err))
	}
	fmt.Fprintln(w, "signed in")
	msg := testMessage(p, from, m.To, cfg.Upstream.HeloName, time.Now())
	err = conn.Mail(ctx, from, &smtp.MailOptions{Size: int64(len(msg))})
	if err == nil {
		err = conn.Rcpt(ctx, m.To, nil)
	}
	if err == nil {
		err = conn.Data(ctx, strings.NewReader(msg))
	}
	conn.Release() // RSET if the message did not go; QUIT when the pools close
	if err != nil {
		return fmt.Errorf("sending the test message: %w", err)
	}
	fmt.Fprintf(w, "sent from %s to %s; the upstream said: %s\n", from, m.To, conn.LastReply())
	return nil
}

// signIn signs p in upstream on a new connection, through the one sign-in of package credential
// (a refused OAuth token is renewed once, as for a delivery).
func signIn(ctx context.Context, creds *credential.Manager, pools *upstream.Pools, p project.Project) (conn *upstream.Conn, err error) {
	err = creds.SignIn(ctx, p, func(a upstream.Auth) error {
		conn, err = pools.Acquire(ctx, p, a)
		return err
	})
	return conn, err
}

func authLabel(p project.Project) string {
	switch a := p.Auth; {
	case a.Type == project.AuthOAuth2 && a.OAuth != nil:
		return "oauth2 (" + a.OAuth.Provider + ")"
	case a.Type == project.AuthPlugin && a.Plugin != nil:
		return "plugin (" + a.Plugin.Provider + ")"
	case a.Type == "":
		return string(project.AuthBasic)
	}
	return string(p.Auth.Type)
}

// nextStep says what an administrator can do about err (package advice).
func nextStep(p project.Project, err error) string {
	if next := advice.Next(p, err); next != "" {
		return next
	}
	return "see the error above; mail for this project waits in Postfix's queue meanwhile"
}

// testMessage is the message send-test sends.
func testMessage(p project.Project, from, to, host string, now time.Time) string {
	id := make([]byte, 12)
	rand.Read(id)
	var b strings.Builder
	fmt.Fprintf(&b, "Date: %s\r\n", now.Format(time.RFC1123Z))
	fmt.Fprintf(&b, "From: <%s>\r\n", from)
	fmt.Fprintf(&b, "To: <%s>\r\n", to)
	fmt.Fprintf(&b, "Subject: Postern test message (project %s)\r\n", p.Name)
	fmt.Fprintf(&b, "Message-ID: <%s@%s>\r\n", hex.EncodeToString(id), host)
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
	fmt.Fprintf(&b, "This message was sent with `postern send-test` through project %s's upstream,\r\n", p.Name)
	fmt.Fprintf(&b, "%s, to check that Postern can sign in there and send as %s.\r\n", p.Upstream.Address(), from)
	return b.String()
}
