package sidecar

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/advice"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/upstream"
)

// Check is `postern check`: for each enabled project (or the ones named), it gets the credential
// as a delivery would (an OAuth token may be refreshed and written back) and signs in upstream on
// a new connection, then says what works and, for what does not, what to do next. It returns an
// error when a project failed.
func Check(ctx context.Context, cfg *config.Config, log *slog.Logger, w io.Writer, names []string) error {
	st, _, err := OpenStore(ctx, cfg, log.With("component", "store"), StoreOpen)
	if err != nil {
		return err
	}
	defer st.Close()
	projects, err := st.Projects(ctx)
	if err != nil {
		return fmt.Errorf("reading the projects: %w", err)
	}
	fmt.Fprintf(w, "store: %d projects\n", len(projects))
	if len(names) > 0 {
		var chosen []project.Project
		for _, n := range names {
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

	failed := 0
	for _, p := range projects {
		if p.IsRemoved() {
			fmt.Fprintf(w, "%s: removed, not checked (postern project purge %s forgets it)\n", p.Name, p.Name)
			continue
		}
		if !p.Enabled {
			fmt.Fprintf(w, "%s: disabled, not checked (postern project enable %s)\n", p.Name, p.Name)
			continue
		}
		fmt.Fprintf(w, "%s: %s upstream %s ... ", p.Name, authLabel(p), p.Upstream.Address())
		start := time.Now()
		conn, err := signIn(ctx, parts.Credentials, parts.Pools, p)
		if err != nil {
			failed++
			fmt.Fprintf(w, "FAILED\n  %v\n  next: %s\n", err, nextStep(p, err))
			continue
		}
		fmt.Fprintf(w, "ok (signed in in %s", time.Since(start).Round(time.Millisecond))
		if n := conn.MaxSize(); n > 0 {
			fmt.Fprintf(w, ", messages up to %d bytes", n)
		}
		fmt.Fprintln(w, ")")
		conn.Release() // QUIT when the pools close
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d projects cannot deliver", failed, len(projects))
	}
	return nil
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
