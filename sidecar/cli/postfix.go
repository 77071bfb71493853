package cli

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/sidecar/config"
)

const postfixAbout = `
Print the lines to add to Postfix's main.cf and master.cf so that Postfix routes the senders of
Postern's projects through Postern, for the sockets this configuration listens on. Senders of no
project are unaffected: Postern's socketmap answers NOTFOUND for them.

Apply with 'postfix reload' after adding them.

With --postconf, print the same settings as postconf(1) commands instead (postconf -e for main.cf,
postconf -Me for the postern service, postconf -Fe for chroot columns), to run as root on the
Postfix host: a script edits Postfix's files the way Postfix's own tool does.

Postfix's chroot: Debian's stock master.cf runs most services chrooted in /var/spool/postfix, where
/run/postern does not exist. The postern service is printed with chroot n; the services that
connect to Postern's unix sockets must run outside the chroot too: rewrite (trivial-rewrite asks
the socketmap) and, with a milter, smtp/inet (and every other smtpd service) and cleanup. The
--postconf output sets their chroot column to n. Loopback TCP addresses instead of unix sockets
avoid the question.`

// postfixRunDirParam is the user-defined main.cf parameter naming Postern's socket directory.
const postfixRunDirParam = "postern_run_dir"

// postfixMarginOverPostern is how much longer Postfix waits for Postern than Postern waits for the
// upstream, so that Postern's clearer reply arrives before Postfix gives up.
const postfixMarginOverPostern = time.Minute

func (a *App) postfixConfigCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "postfix-config",
		Short: "print the main.cf and master.cf lines for this configuration",
		Long:  postfixAbout,
		Args:  exactArgs(0),
	}
	load := a.configFlag(cmd)
	mainOnly := cmd.Flags().Bool("main", false, "print only the main.cf lines")
	masterOnly := cmd.Flags().Bool("master", false, "print only the master.cf lines")
	postconf := cmd.Flags().Bool("postconf", false, "print postconf commands instead of the lines to paste")
	cmd.RunE = func(*cobra.Command, []string) error {
		cfg, path, err := load()
		if err != nil {
			return err
		}
		if err := validate(cfg, path); err != nil {
			return err
		}
		switch {
		case *postconf:
			fmt.Fprint(a.Stdout, PostconfCommands(cfg))
		case *mainOnly && !*masterOnly:
			fmt.Fprint(a.Stdout, MainCF(cfg))
		case *masterOnly && !*mainOnly:
			fmt.Fprint(a.Stdout, MasterCF(cfg))
		default:
			fmt.Fprintf(a.Stdout, "# ---- add to main.cf ----\n%s\n# ---- add to master.cf ----\n%s", MainCF(cfg), MasterCF(cfg))
		}
		return nil
	}
	return cmd
}

// Per-destination limits of the Postern transport. Postern is one destination for every project,
// so these are shared by all of them.
const (
	// postfixConcurrency is how many deliveries to Postern may run at once. Each waits while Postern
	// talks to a project's upstream, so a slow upstream holds its slots for a while; Postern limits
	// each project's connections itself. Slow start is off for the same reason.
	postfixConcurrency = 50
	// postfixRecipientLimit is the recipients per delivery, at or below the smallest per-message
	// limit of common upstreams (Gmail 100, Exchange Online 500).
	postfixRecipientLimit = 50
	// postfixGreetingTimeout bounds Postern's own answer to LHLO/EHLO, which needs no upstream.
	postfixGreetingTimeout = time.Minute
)

// MainCF returns the main.cf lines for cfg: the socketmap lookup that sends the senders of Postern's
// projects to Postern's transport, the transport's shared limits, and the milter when one is
// configured.
func MainCF(cfg *config.Config) string {
	var b strings.Builder
	runDir := ""
	if config.IsUnixPath(cfg.Listen.Socketmap) {
		runDir = filepath.Dir(cfg.Listen.Socketmap)
	}
	// socketAddr is how Postfix names a Postern socket: relative to $postern_run_dir when it is there.
	socketAddr := func(addr string) string {
		if !config.IsUnixPath(addr) {
			return "inet:" + addr
		}
		if runDir != "" && filepath.Dir(addr) == runDir {
			return "unix:$" + postfixRunDirParam + "/" + filepath.Base(addr)
		}
		return "unix:" + addr
	}
	name := transportName(cfg)
	if runDir != "" {
		b.WriteString("# Where Postern's sockets are.\n")
		fmt.Fprintf(&b, "%s = %s\n\n", postfixRunDirParam, runDir)
	}
	b.WriteString("# Postfix asks Postern which transport serves each envelope sender. Senders of no Postern\n")
	b.WriteString("# project get NOTFOUND and are delivered as before; transport_maps still wins.\n")
	fmt.Fprintf(&b, "sender_dependent_default_transport_maps = socketmap:%s:senders\n\n", socketAddr(cfg.Listen.Socketmap))
	b.WriteString("# Postern is one destination for all projects: these limits are shared. Each delivery waits\n")
	b.WriteString("# while Postern talks to the upstream, and Postern limits each project's connections itself,\n")
	b.WriteString("# so start at full concurrency. Keep the recipients per delivery at or below the smallest\n")
	b.WriteString("# per-message limit of your upstreams (Gmail 100, Exchange Online 500).\n")
	fmt.Fprintf(&b, "%s_destination_concurrency_limit = %d\n", name, postfixConcurrency)
	fmt.Fprintf(&b, "%s_initial_destination_concurrency = %d\n", name, postfixConcurrency)
	fmt.Fprintf(&b, "%s_destination_recipient_limit = %d\n", name, postfixRecipientLimit)
	if cfg.Listen.Milter != "" {
		b.WriteString("\n")
		b.WriteString(MilterCF(socketAddr(cfg.Listen.Milter)))
	}
	return b.String()
}

// postfixMilterParam is the user-defined main.cf parameter naming Postern's milter, so that a site
// with milters of its own adds it to its lists by name.
const postfixMilterParam = "postern_milter"

// MilterCF returns the main.cf lines that have Postfix ask Postern's milter at addr (as Postfix
// names it, e.g. "unix:$postern_run_dir/milter.sock") about mail received over SMTP and mail
// submitted with sendmail. default_action=accept: while the milter cannot be reached, mail is
// accepted without the early checks, and Postern still enforces its limits at delivery.
func MilterCF(addr string) string {
	var b strings.Builder
	b.WriteString("# Postern's checks at submission time. While the milter cannot be reached, Postfix accepts\n")
	b.WriteString("# mail without them (default_action=accept); Postern still enforces its limits at delivery.\n")
	fmt.Fprintf(&b, "%s = { %s, default_action=accept }\n", postfixMilterParam, addr)
	b.WriteString("# If smtpd_milters or non_smtpd_milters is already set, add $" + postfixMilterParam + " to it.\n")
	fmt.Fprintf(&b, "smtpd_milters = $%s\n", postfixMilterParam)
	fmt.Fprintf(&b, "non_smtpd_milters = $%s\n", postfixMilterParam)
	b.WriteString("milter_protocol = 6\n")
	return b.String()
}

func transportName(cfg *config.Config) string {
	if name := cfg.TransportName(); name != "" {
		return name
	}
	return config.DefaultTransportService
}

// MasterCF returns the master.cf service Postfix delivers Postern's mail with: an lmtp client when
// Postern listens for LMTP, else an smtp client, named as the transport. Postern relays while Postfix
// waits, so each of Postfix's timeouts is a minute longer than Postern's own limit for the same
// upstream step: Postern, not Postfix, gives up on a slow upstream and answers 4xx for that project
// alone, where a timeout on Postfix's side would count against the one destination of every project.
func MasterCF(cfg *config.Config) string {
	client, greeting := "lmtp", "lhlo"
	if cfg.Listen.LMTP == "" {
		client, greeting = "smtp", "helo"
	}
	name := transportName(cfg)
	secs := func(d time.Duration) string { return fmt.Sprintf("%ds", int((d+postfixMarginOverPostern)/time.Second)) }
	command := secs(cfg.Upstream.CommandTimeout)

	var b strings.Builder
	fmt.Fprintf(&b, "# Postern: Postfix delivers the mail of Postern's senders to Postern over %s.\n", strings.ToUpper(client))
	b.WriteString("# chroot (column five) must be n: the socket is outside Postfix's queue directory.\n")
	for _, s := range chrootedClients(cfg) {
		fmt.Fprintf(&b, "%s %s too (Debian's stock master.cf has y):\n#   %s.\n", chrootNote, s.service, s.why)
	}
	fmt.Fprintf(&b, "%-9s unix  -       -       n       -       -       %s\n", name, client)
	opt := func(k, v string) { fmt.Fprintf(&b, "  -o %s=%s\n", k, v) }
	opt("syslog_name", "postfix/"+name)
	opt(client+"_connection_cache_on_demand", "yes")
	// Postfix's queue id reaches Postern (XFORWARD IDENT), for log lines that join Postfix's.
	opt(client+"_send_xforward_command", "yes")
	if client == "smtp" {
		// Postern's SMTP listener offers neither; a site's relay settings must not apply to it.
		opt("smtp_tls_security_level", "none")
		opt("smtp_sasl_auth_enable", "no")
	}
	opt(client+"_"+greeting+"_timeout", fmt.Sprintf("%ds", int(postfixGreetingTimeout/time.Second)))
	// At MAIL FROM Postern may first connect and greet upstream, then send MAIL FROM there (unless
	// the upstream pipelines: then MAIL goes with the recipients, over LMTP with DATA, while the
	// message streams in).
	u := cfg.Upstream
	opt(client+"_mail_timeout", secs(u.DialTimeout+u.GreetingTimeout+u.CommandTimeout))
	opt(client+"_rcpt_timeout", command)
	opt(client+"_data_init_timeout", command)
	opt(client+"_data_xfer_timeout", command)
	// The upstream answers DATA and then the end of data.
	opt(client+"_data_done_timeout", secs(u.CommandTimeout+u.DataTimeout))
	return b.String()
}

// chrootNote starts MasterCF's comment on each service in chrootedClients.
const chrootNote = "# Set chroot to n for"

// chrootedClient is a stock master.cf service that connects to one of Postern's unix sockets, and
// so must not run chrooted.
type chrootedClient struct {
	service string // service/type, as postconf -F names it
	why     string
}

// chrootedClients lists the services other than Postern's own transport that connect to Postern's
// unix sockets. A chrooted process resolves a socket path inside /var/spool/postfix, where
// /run/postern does not exist: the lookup then fails and mail waits (the socketmap), or is
// accepted without Postern's checks (the milter, default_action=accept).
func chrootedClients(cfg *config.Config) []chrootedClient {
	var out []chrootedClient
	if config.IsUnixPath(cfg.Listen.Socketmap) {
		out = append(out, chrootedClient{"rewrite/unix", "trivial-rewrite does the sender_dependent_default_transport_maps lookup"})
	}
	if config.IsUnixPath(cfg.Listen.Milter) {
		out = append(out,
			chrootedClient{"smtp/inet", "smtpd asks Postern's milter (so must every other smtpd service, such as submission/inet)"},
			chrootedClient{"cleanup/unix", "cleanup asks Postern's milter about mail submitted with sendmail"})
	}
	return out
}

// PostconfCommands returns the settings of MainCF and MasterCF as postconf(1) commands, with their
// comments: postconf -e for each main.cf parameter, postconf -Me for the transport's master.cf
// service, and postconf -Fe taking the services that connect to Postern's unix sockets out of
// Postfix's chroot (see chrootedClients).
func PostconfCommands(cfg *config.Config) string {
	var b strings.Builder
	b.WriteString("# Postern's Postfix wiring as postconf commands. Run them as root on the Postfix host, then:\n")
	b.WriteString("#   postfix check && postfix reload\n\n")
	for _, line := range strings.Split(strings.TrimRight(MainCF(cfg), "\n"), "\n") {
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			b.WriteString(line + "\n")
		default:
			fmt.Fprintf(&b, "postconf -e %s\n", shellQuote(line))
		}
	}
	b.WriteString("\n")
	var entry []string
	for _, line := range strings.Split(strings.TrimRight(MasterCF(cfg), "\n"), "\n") {
		switch {
		case strings.HasPrefix(line, chrootNote), strings.HasPrefix(line, "#   "):
			// Said below, with the commands.
		case strings.HasPrefix(line, "#"):
			b.WriteString(line + "\n")
		default:
			entry = append(entry, strings.Fields(line)...)
		}
	}
	if len(entry) >= 2 {
		service := entry[0] + "/" + entry[1]
		fmt.Fprintf(&b, "postconf -Me %s\n", shellQuote(service+" = "+strings.Join(entry, " ")))
	}
	if cs := chrootedClients(cfg); len(cs) > 0 {
		b.WriteString("\n# Postfix's chroot hides /run: the services that connect to Postern's unix sockets run\n")
		b.WriteString("# outside it (Debian's stock master.cf runs them chrooted). Loopback TCP addresses in\n")
		b.WriteString("# postern.yaml avoid this.\n")
		for _, c := range cs {
			fmt.Fprintf(&b, "# %s: %s.\n", c.service, c.why)
			fmt.Fprintf(&b, "postconf -Fe %s\n", shellQuote(c.service+"/chroot = n"))
		}
	}
	return b.String()
}

// shellQuote quotes s for a POSIX shell: $postern_run_dir and braces stay as they are, for Postfix.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
