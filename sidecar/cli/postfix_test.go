package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/config"
)

// The documented Postfix snippets in contrib/postfix are what `postern postfix-config` prints for
// the default configuration, setting for setting (comments and layout may differ). main-milter.cf
// holds the lines added when listen.milter is $postern_run_dir/milter.sock.
func TestPostfixConfigMatchesContrib(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	withMilter := config.Default()
	withMilter.Listen.Milter = filepath.Join(filepath.Dir(withMilter.Listen.Socketmap), "milter.sock")
	milterLines := func(s string) any {
		all, without := mainCFSettings(s), mainCFSettings(MainCF(cfg))
		for k := range without {
			delete(all, k)
		}
		return all
	}
	for _, tc := range []struct {
		file, generated string
		parse           func(string) any
	}{
		{"main.cf", MainCF(cfg), func(s string) any { return mainCFSettings(s) }},
		{"master.cf", MasterCF(cfg), func(s string) any { return masterCFServices(s) }},
		{"main-milter.cf", MainCF(withMilter), milterLines},
	} {
		path := filepath.Join("..", "..", "contrib", "postfix", tc.file)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("the documented snippet is missing: %v", err)
			continue
		}
		got, want := tc.parse(tc.generated), tc.parse(string(b))
		if !reflect.DeepEqual(got, want) {
			t.Errorf("postern postfix-config and %s disagree:\n postfix-config: %v\n %s: %v", path, got, tc.file, want)
		}
	}
}

// logicalLines drops comments and blank lines and joins continuation lines (those starting with
// white space) to the line they continue, as Postfix reads its files.
func logicalLines(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && len(out) > 0 {
			out[len(out)-1] += " " + trimmed
			continue
		}
		out = append(out, trimmed)
	}
	return out
}

// mainCFSettings maps each main.cf parameter to its value, white space normalized.
func mainCFSettings(s string) map[string]string {
	m := map[string]string{}
	for _, line := range logicalLines(s) {
		name, value, _ := strings.Cut(line, "=")
		m[strings.TrimSpace(name)] = strings.Join(strings.Fields(value), " ")
	}
	return m
}

// masterCFServices maps each master.cf service to its eight fields and its sorted options.
func masterCFServices(s string) map[string][]string {
	m := map[string][]string{}
	for _, line := range logicalLines(s) {
		f := strings.Fields(line)
		if len(f) < 8 {
			m[line] = nil
			continue
		}
		var opts []string
		for i := 8; i < len(f); i++ {
			if f[i] == "-o" && i+1 < len(f) {
				i++
			}
			opts = append(opts, f[i])
		}
		slices.Sort(opts)
		m[f[0]+"/"+f[1]] = append(f[:8:8], opts...)
	}
	return m
}

func TestPostfixConfigCommand(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	r := h.mustRun("", "postfix-config")
	for _, want := range []string{
		"# ---- add to main.cf ----",
		"postern_run_dir = /run/postern\n",
		"sender_dependent_default_transport_maps = socketmap:unix:$postern_run_dir/socketmap.sock:senders\n",
		"# ---- add to master.cf ----",
		"postern   unix  -       -       n       -       -       lmtp\n",
		"  -o lmtp_data_done_timeout=960s\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
	if r := h.mustRun("", "postfix-config", "--main"); strings.Contains(r.stdout, "lmtp") {
		t.Errorf("--main prints master.cf lines:\n%s", r.stdout)
	}
	if r := h.mustRun("", "postfix-config", "--master"); strings.Contains(r.stdout, "socketmap") {
		t.Errorf("--master prints main.cf lines:\n%s", r.stdout)
	}
}

func TestPostfixConfigFollowsTheConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml string
		main       map[string]string
		master     map[string][]string
	}{
		{
			name: "other socket directory and timeouts",
			yaml: "listen: {lmtp: /var/spool/postfix/postern/lmtp, socketmap: /var/spool/postfix/postern/map}\nupstream: {data_timeout: 5m, command_timeout: 2m}\n",
			main: map[string]string{
				"postern_run_dir":                         "/var/spool/postfix/postern",
				"sender_dependent_default_transport_maps": "socketmap:unix:$postern_run_dir/map:senders",
				"postern_destination_concurrency_limit":   "50",
				"postern_initial_destination_concurrency": "50",
				"postern_destination_recipient_limit":     "50",
			},
			master: map[string][]string{"postern/unix": {"postern", "unix", "-", "-", "n", "-", "-", "lmtp",
				"lmtp_connection_cache_on_demand=yes", "lmtp_data_done_timeout=480s", "lmtp_data_init_timeout=180s",
				"lmtp_data_xfer_timeout=180s", "lmtp_lhlo_timeout=60s", "lmtp_mail_timeout=240s", "lmtp_rcpt_timeout=180s",
				"lmtp_send_xforward_command=yes", "syslog_name=postfix/postern"}},
		},
		{
			name: "smtp delivery, tcp socketmap, milter, own transport name",
			yaml: "listen: {lmtp: '', smtp: '127.0.0.1:10025', socketmap: '127.0.0.1:10026', milter: /run/postern/milter.sock}\ntransport: 'relay2:[127.0.0.1]:10025'\n",
			main: map[string]string{
				"sender_dependent_default_transport_maps": "socketmap:inet:127.0.0.1:10026:senders",
				"relay2_destination_concurrency_limit":    "50",
				"relay2_initial_destination_concurrency":  "50",
				"relay2_destination_recipient_limit":      "50",
				"postern_milter":                          "{ unix:/run/postern/milter.sock, default_action=accept }",
				"smtpd_milters":                           "$postern_milter",
				"non_smtpd_milters":                       "$postern_milter",
				"milter_protocol":                         "6",
			},
			master: map[string][]string{"relay2/unix": {"relay2", "unix", "-", "-", "n", "-", "-", "smtp",
				"smtp_connection_cache_on_demand=yes", "smtp_data_done_timeout=960s", "smtp_data_init_timeout=360s",
				"smtp_data_xfer_timeout=360s", "smtp_helo_timeout=60s", "smtp_mail_timeout=420s", "smtp_rcpt_timeout=360s",
				"smtp_sasl_auth_enable=no", "smtp_send_xforward_command=yes", "smtp_tls_security_level=none", "syslog_name=postfix/relay2"}},
		},
		{
			name: "milter beside the socketmap",
			yaml: "listen: {milter: /run/postern/milter.sock}\n",
			main: map[string]string{
				"postern_run_dir":                         "/run/postern",
				"sender_dependent_default_transport_maps": "socketmap:unix:$postern_run_dir/socketmap.sock:senders",
				"postern_destination_concurrency_limit":   "50",
				"postern_initial_destination_concurrency": "50",
				"postern_destination_recipient_limit":     "50",
				"postern_milter":                          "{ unix:$postern_run_dir/milter.sock, default_action=accept }",
				"smtpd_milters":                           "$postern_milter",
				"non_smtpd_milters":                       "$postern_milter",
				"milter_protocol":                         "6",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := config.Parse([]byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if got := mainCFSettings(MainCF(cfg)); !reflect.DeepEqual(got, tc.main) {
				t.Errorf("main.cf:\n got  %v\n want %v", got, tc.main)
			}
			if tc.master != nil {
				if got := masterCFServices(MasterCF(cfg)); !reflect.DeepEqual(got, tc.master) {
					t.Errorf("master.cf:\n got  %v\n want %v", got, tc.master)
				}
			}
		})
	}
}

// The --postconf commands, run against a scratch copy of Debian's stock master.cf (every service
// chrooted), give a configuration Postfix accepts, with Postern's service and settings, and with
// every service that connects to Postern's unix sockets out of the chroot.
func TestPostfixConfigPostconf(t *testing.T) {
	t.Parallel()
	postconf, err := exec.LookPath("postconf")
	if err != nil {
		t.Skip("Postfix is not installed (make deps installs it): ", err)
	}
	const stockMaster = "/usr/share/postfix/master.cf.dist"
	stock, err := os.ReadFile(stockMaster)
	if err != nil {
		t.Skip("Debian's stock master.cf is not here: ", err)
	}
	for _, tc := range []struct {
		name, yaml string
		chrootOff  []string
	}{
		{"defaults", "", []string{"rewrite/unix"}},
		{"milter", "listen: {milter: /run/postern/milter.sock}\n", []string{"rewrite/unix", "smtp/inet", "cleanup/unix"}},
		{"loopback tcp", "listen: {lmtp: '', smtp: '127.0.0.1:10025', socketmap: '127.0.0.1:10026'}\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "main.cf"), []byte("compatibility_level = 3.7\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "master.cf"), stock, 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Parse([]byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			script := PostconfCommands(cfg)
			// The commands as printed, with postconf pointed at the scratch directory.
			sh := exec.Command("sh", "-eu", "-c", `postconf() { command "$POSTCONF" -c "$DIR" "$@"; }`+"\n"+script)
			sh.Env = append(os.Environ(), "POSTCONF="+postconf, "DIR="+dir)
			if out, err := sh.CombinedOutput(); err != nil || len(out) > 0 {
				t.Fatalf("running the commands: %v\n%s\n--- commands:\n%s", err, out, script)
			}
			if out, err := exec.Command("postfix", "-c", dir, "check").CombinedOutput(); err != nil || len(out) > 0 {
				t.Fatalf("postfix check: %v\n%s", err, out)
			}
			n, err := exec.Command(postconf, "-c", dir, "-n").CombinedOutput()
			if err != nil || strings.Contains(string(n), "warning") {
				t.Fatalf("postconf -n: %v\n%s", err, n)
			}
			// Postfix now holds what the paste-in snippets say.
			for k, v := range mainCFSettings(MainCF(cfg)) {
				if !strings.Contains(string(n), k+" = "+v+"\n") {
					t.Errorf("main.cf lacks %s = %s:\n%s", k, v, n)
				}
			}
			m, err := exec.Command(postconf, "-c", dir, "-M", transportName(cfg)+"/unix").Output()
			if err != nil {
				t.Fatal(err)
			}
			if got, want := masterCFServices(string(m)), masterCFServices(MasterCF(cfg)); !reflect.DeepEqual(got, want) {
				t.Errorf("master.cf service:\n got  %v\n want %v", got, want)
			}
			for _, svc := range []string{"rewrite/unix", "smtp/inet", "cleanup/unix"} {
				out, err := exec.Command(postconf, "-c", dir, "-F", svc+"/chroot").Output()
				if err != nil {
					t.Fatal(err)
				}
				want := "y"
				if slices.Contains(tc.chrootOff, svc) {
					want = "n"
				}
				if got := strings.TrimSpace(string(out)); got != svc+"/chroot = "+want {
					t.Errorf("%s, want chroot %s", got, want)
				}
			}
		})
	}
}
