package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store"
)

const listAbout = `
List the projects: name, whether enabled (or when removed), how they sign in, upstream, senders,
and for OAuth projects the state of their token.

With --json, a JSON array with one object per project: its settings as 'postern project show
--json' prints them (secrets as [set] or [not set]), and "token_state" (OAuth projects: ok,
needs_reauth or "not signed in"; others: null) and "expired" (a removed project whose hold is
over, to purge).`

func (a *App) projectListCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "list the projects",
		Long:  listAbout,
		Args:  exactArgs(0),
	}
	load := a.configFlag(cmd)
	asJSON := jsonFlag(cmd, "the projects")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return a.projectList(cmd.Context(), load, *asJSON)
	}
	return cmd
}

func (a *App) projectList(ctx context.Context, load configLoader, asJSON bool) error {
	cfg, st, err := a.openConfigStore(ctx, load)
	if err != nil {
		return err
	}
	defer st.Close()
	all, err := st.Projects(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		return a.listJSON(ctx, cfg, st, all)
	}
	if len(all) == 0 {
		fmt.Fprintln(a.Stdout, "no projects yet: add one with 'postern project add'")
		return nil
	}
	tw := tabwriter.NewWriter(a.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tENABLED\tAUTH\tUPSTREAM\tSENDERS\tTOKEN")
	for _, p := range all {
		if p.IsRemoved() {
			state := "removed " + p.Removed.Format(time.DateOnly)
			if holdExpired(cfg, p) {
				state += " (expired: purge it)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s %s\t%s\t%s\n", p.Name, state, "-",
				p.Upstream.Address(), p.Upstream.TLS, strings.Join(p.Senders, ", "), "-")
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s %s\t%s\t%s\n", p.Name, yesNo(p.Enabled), p.Auth.Type,
			p.Upstream.Address(), p.Upstream.TLS, strings.Join(p.Senders, ", "), tokenState(ctx, st, p))
	}
	return tw.Flush()
}

// holdExpired says that a removed project's senders are no longer held: it is to be purged.
func holdExpired(cfg *config.Config, p project.Project) bool {
	return p.IsRemoved() && !time.Now().Before(p.HeldUntil(cfg.Postfix.RemovedHold()))
}

// listJSON prints the projects as a JSON array (listAbout says what each object holds).
func (a *App) listJSON(ctx context.Context, cfg *config.Config, st store.Tokens, all []project.Project) error {
	out := make([]map[string]any, 0, len(all))
	for _, p := range all {
		obj, err := project.PublicMap(p)
		if err != nil {
			return err
		}
		obj["token_state"] = nil
		if !p.IsRemoved() && p.Auth.Type == project.AuthOAuth2 {
			obj["token_state"] = tokenState(ctx, st, p)
		}
		obj["expired"] = holdExpired(cfg, p)
		out = append(out, obj)
	}
	return writeJSON(a.Stdout, out)
}

// tokenState is the TOKEN column: the state of an OAuth project's token, "-" for other projects.
func tokenState(ctx context.Context, st store.Tokens, p project.Project) string {
	if p.Auth.Type != project.AuthOAuth2 {
		return "-"
	}
	t, err := st.Token(ctx, p.Name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return "not signed in"
	case err != nil:
		return "unreadable"
	}
	return string(t.State)
}

func (a *App) projectShowCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:               "show NAME",
		Short:             "show one project (secrets as [set] or [not set])",
		Long:              "Show every setting of a project. Secrets show as [set] or [not set], never their value.",
		Args:              exactArgs(1),
		ValidArgsFunction: a.completeProjects,
	}
	load := a.configFlag(cmd)
	asJSON := cmd.Flags().Bool("json", false, "print JSON for machines (secrets redacted the same way)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return a.projectShow(cmd.Context(), load, args[0], *asJSON)
	}
	return cmd
}

func (a *App) projectShow(ctx context.Context, load configLoader, name string, asJSON bool) error {
	st, err := a.openProjectStore(ctx, load)
	if err != nil {
		return err
	}
	defer st.Close()
	p, err := st.Project(ctx, name)
	if err != nil {
		return ExplainNotFound(err, name)
	}
	var tok *project.Token
	if p.Auth.Type == project.AuthOAuth2 {
		t, err := st.Token(ctx, p.Name)
		switch {
		case err == nil:
			tok = &t
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
	}
	if asJSON {
		b, err := showJSON(p, tok)
		if err != nil {
			return err
		}
		_, err = a.Stdout.Write(append(b, '\n'))
		return err
	}
	showText(a.Stdout, p, tok)
	return nil
}

func showText(w io.Writer, p project.Project, tok *project.Token) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	orDefault := func(v, def string) string {
		if v == "" {
			return def
		}
		return v
	}
	limit := func(n int64, none string) string {
		if n == 0 {
			return none
		}
		return strconv.FormatInt(n, 10)
	}
	row("name", p.Name)
	if p.IsRemoved() {
		row("removed", p.Removed.Format(time.RFC3339)+" (its senders' mail is deferred; 'postern project purge "+p.Name+"' deletes it)")
		row("senders", strings.Join(p.Senders, ", "))
		tw.Flush()
		return
	}
	row("enabled", yesNo(p.Enabled))
	row("version", strconv.Itoa(p.Version))
	row("senders", strings.Join(p.Senders, ", "))
	row("send as", orDefault(strings.Join(p.SendAs, ", "), "(the senders)"))
	u := p.Upstream
	row("upstream", u.Address())
	row("tls", string(u.TLS))
	row("server name", orDefault(u.ServerName, "(the host)"))
	if u.CAPEM == "" {
		row("trusted CAs", "the system's")
	} else {
		row("trusted CAs", "from --ca-file")
	}
	if u.InsecureSkipVerify {
		row("verify certificate", "NO (insecure-skip-verify)")
	} else {
		row("verify certificate", "yes")
	}
	row("auth", string(p.Auth.Type))
	row("username", p.Auth.Username)
	switch p.Auth.Type {
	case project.AuthBasic:
		row("password", project.SecretMark(p.Auth.Password))
		row("mechanism", orDefault(p.Auth.Mechanism, "(the server's, PLAIN first)"))
	case project.AuthPlugin:
		if pa := p.Auth.Plugin; pa != nil {
			row("credential provider", pa.Provider)
			keys := make([]string, 0, len(pa.Config))
			for k := range pa.Config {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				row("provider config "+k, pa.Config[k])
			}
		}
	case project.AuthOAuth2:
		if o := p.Auth.OAuth; o != nil {
			row("oauth provider", o.Provider)
			if o.Tenant != "" {
				row("oauth tenant", o.Tenant)
			}
			row("oauth grant", orDefault(o.Grant, "authorization_code"))
			row("oauth client id", o.ClientID)
			row("oauth client secret", project.SecretMark(o.ClientSecret))
			if !o.ClientSecretExpires.IsZero() {
				row("oauth client secret expiry", project.ExpiryText(o.ClientSecretExpires, time.Now()))
			}
			row("oauth scopes", orDefault(strings.Join(o.Scopes, " "), "(the provider's)"))
			for _, e := range []struct{ k, v string }{{"oauth auth url", o.AuthURL}, {"oauth token url", o.TokenURL}, {"oauth device url", o.DeviceURL}, {"oauth revocation url", o.RevocationURL}, {"oauth issuer", o.Issuer}} {
				if e.v != "" {
					row(e.k, e.v)
				}
			}
		}
		if tok == nil {
			row("token", "none: the mailbox is not signed in")
		} else {
			state := string(tok.State)
			if tok.Reason != "" {
				state += " (" + tok.Reason + ")"
			}
			row("token state", state)
			row("token account", tok.Account)
			row("access token", project.SecretMark(tok.AccessToken))
			if !tok.Expiry.IsZero() {
				row("access token expiry", tok.Expiry.Format(time.RFC3339))
			}
			row("refresh token", project.SecretMark(tok.RefreshToken))
			row("refreshed by", tok.RefreshedBy)
			if !tok.UpdatedAt.IsZero() {
				row("token updated", tok.UpdatedAt.Format(time.RFC3339))
			}
		}
		if tok == nil || tok.State == project.TokenNeedsReauth {
			if step := nextStep(p, ""); step != "" {
				row("next step", step)
			}
		}
	}
	own, l := p.Limits, p.EffectiveLimits()
	provider, _ := project.ProviderLimits(p)
	from := func(mine int) string {
		if mine == 0 && provider != "" {
			return " (" + provider + " default)"
		}
		return ""
	}
	conns := strconv.Itoa(l.Connections())
	if l.MaxConnections == 0 {
		conns += " (default)"
	} else {
		conns += from(own.MaxConnections)
	}
	row("max connections", conns)
	row("messages per minute", limit(int64(l.MessagesPerMinute), "no limit")+from(own.MessagesPerMinute))
	row("recipients per day", limit(int64(l.RecipientsPerDay), "no limit")+from(own.RecipientsPerDay))
	row("max recipients", limit(int64(l.MaxRecipients), "the global limit")+from(own.MaxRecipients))
	row("max message bytes", limit(l.MaxMessageBytes, "the global limit"))
	tw.Flush()
}

// showJSON is the project as project.PublicMap shows it, with the whole days left until its client
// secret expires (auth.oauth.client_secret_days_left, negative once expired, when the date is
// known) and, for OAuth projects, the token record redacted the same way.
func showJSON(p project.Project, tok *project.Token) ([]byte, error) {
	obj, err := project.PublicMap(p)
	if err != nil {
		return nil, err
	}
	if o := p.Auth.OAuth; o != nil && !o.ClientSecretExpires.IsZero() {
		if auth, ok := obj["auth"].(map[string]any); ok {
			if om, ok := auth["oauth"].(map[string]any); ok {
				om["client_secret_days_left"] = int(math.Floor(time.Until(o.ClientSecretExpires).Hours() / 24))
			}
		}
	}
	if p.Auth.Type == project.AuthOAuth2 {
		obj["token"] = nil
		if tok != nil {
			if obj["token"], err = project.PublicTokenMap(*tok); err != nil {
				return nil, err
			}
		}
	}
	return json.MarshalIndent(obj, "", "  ")
}
