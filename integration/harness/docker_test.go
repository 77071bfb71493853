package harness

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/postern/postern/sidecar/config"
)

// The packaging in contrib/postfix is checked without a Docker engine or systemd: what the files
// refer to exists, images are pinned, nothing is published beyond loopback, and the unit carries
// its users, directories and hardening.

func contribDir(t *testing.T) (root, dir string) {
	t.Helper()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root, filepath.Join(root, "contrib", "postfix")
}

// dockerInstruction is one Dockerfile instruction with continuation lines joined.
type dockerInstruction struct {
	line int
	cmd  string
	args []string
}

func parseDockerfile(t *testing.T, path string) []dockerInstruction {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []dockerInstruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		f := strings.Fields(cur.String())
		out = append(out, dockerInstruction{line: start, cmd: strings.ToUpper(f[0]), args: f[1:]})
		cur.Reset()
	}
	return out
}

var pinnedImage = regexp.MustCompile(`^[a-z0-9./_-]+(:[A-Za-z0-9._-]*\d[A-Za-z0-9._-]*)?(@sha256:[0-9a-f]{64})?$`)

func TestContribDockerfile(t *testing.T) {
	t.Parallel()
	root, dir := contribDir(t)
	stages := map[string]bool{}
	// Base images are build arguments (ARG before the first FROM) whose defaults are the pinned
	// public images: a user with Docker builds unchanged, the suite passes its local images.
	args := map[string]string{}
	var stage string
	stageHas := map[string]map[string]bool{}
	for _, in := range parseDockerfile(t, filepath.Join(dir, "Dockerfile")) {
		if in.cmd == "ARG" && len(stages) == 0 {
			for _, a := range in.args {
				k, v, _ := strings.Cut(a, "=")
				args[k] = v
			}
			continue
		}
		if stage != "" {
			stageHas[stage][in.cmd] = true
		}
		where := func(format string, args ...any) {
			t.Helper()
			t.Errorf("Dockerfile line %d (%s): "+format, append([]any{in.line, in.cmd}, args...)...)
		}
		flags, rest := splitFlags(in.args)
		switch in.cmd {
		case "FROM":
			if len(rest) == 0 {
				where("no image")
				continue
			}
			image := rest[0]
			if name, ok := strings.CutPrefix(image, "${"); ok {
				name = strings.TrimSuffix(name, "}")
				def, ok := args[name]
				if !ok || def == "" {
					where("image %s is no build argument with a default", image)
					continue
				}
				image = def
			}
			if !stages[image] {
				m := pinnedImage.FindStringSubmatch(image)
				if m == nil || (m[1] == "" && m[2] == "") {
					where("image %q is not pinned to a version or digest", image)
				}
				if strings.HasSuffix(image, ":latest") {
					where("image %q uses latest", image)
				}
			}
			if len(rest) == 3 && strings.EqualFold(rest[1], "AS") {
				stages[rest[2]] = true
				stage = rest[2]
				stageHas[stage] = map[string]bool{}
			}
		case "ADD":
			for _, a := range rest {
				if strings.Contains(a, "://") {
					where("ADD fetches %q: download in a RUN with a checksum, or COPY", a)
				}
			}
			where("use COPY instead of ADD")
		case "COPY":
			if from, ok := flags["from"]; ok {
				if !stages[from] {
					where("--from=%s is not an earlier stage", from)
				}
				continue
			}
			if len(rest) < 2 {
				where("COPY needs a source and a destination")
				continue
			}
			for _, src := range rest[:len(rest)-1] {
				if src == "." {
					continue
				}
				if _, err := os.Stat(filepath.Join(root, src)); err != nil {
					where("source %q is not in the build context (the repository root): %v", src, err)
				}
			}
		}
	}
	for _, want := range []string{"build", "postfix", "postern", "vaultdev"} {
		if !stages[want] {
			t.Errorf("Dockerfile has no stage %q", want)
		}
	}
	for _, name := range []string{"GO_IMAGE", "DEBIAN_IMAGE"} {
		if _, ok := args[name]; !ok {
			t.Errorf("Dockerfile: no build argument %s before the first FROM", name)
		}
	}
	// The Postern image: not root, a health check, its state on volumes.
	for _, want := range []string{"USER", "HEALTHCHECK", "VOLUME"} {
		if !stageHas["postern"][want] {
			t.Errorf("Dockerfile: stage postern has no %s", want)
		}
	}
}

// splitFlags separates --name=value flags from the other arguments.
func splitFlags(args []string) (map[string]string, []string) {
	flags := map[string]string{}
	var rest []string
	for _, a := range args {
		if name, ok := strings.CutPrefix(a, "--"); ok {
			k, v, _ := strings.Cut(name, "=")
			flags[k] = v
			continue
		}
		rest = append(rest, a)
	}
	return flags, rest
}

type composeFile struct {
	Services map[string]struct {
		Build *struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
			Target     string `yaml:"target"`
		} `yaml:"build"`
		Image       string   `yaml:"image"`
		Ports       []string `yaml:"ports"`
		Volumes     []string `yaml:"volumes"`
		NetworkMode string   `yaml:"network_mode"`
		Secrets     []string `yaml:"secrets"`
		DependsOn   []string `yaml:"depends_on"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
	Secrets map[string]struct {
		File string `yaml:"file"`
	} `yaml:"secrets"`
}

func TestContribCompose(t *testing.T) {
	t.Parallel()
	root, dir := contribDir(t)
	b, err := os.ReadFile(filepath.Join(dir, "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	stages := map[string]bool{}
	for _, in := range parseDockerfile(t, filepath.Join(dir, "Dockerfile")) {
		if in.cmd == "FROM" && len(in.args) == 3 {
			stages[in.args[2]] = true
		}
	}
	for _, want := range []string{"postfix", "postern", "vault"} {
		if _, ok := c.Services[want]; !ok {
			t.Errorf("compose.yaml has no service %q", want)
		}
	}
	for name, s := range c.Services {
		if s.Build == nil {
			t.Errorf("service %s: no build section (the images are built from this repository)", name)
			continue
		}
		ctxDir := filepath.Join(dir, s.Build.Context)
		if ctxDir != root {
			t.Errorf("service %s: build context %s, want the repository root", name, s.Build.Context)
		}
		if _, err := os.Stat(filepath.Join(ctxDir, s.Build.Dockerfile)); err != nil {
			t.Errorf("service %s: dockerfile: %v", name, err)
		}
		if !stages[s.Build.Target] {
			t.Errorf("service %s: target %q is not a stage of the Dockerfile", name, s.Build.Target)
		}
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("service %s: port %q is not bound to 127.0.0.1", name, p)
			}
		}
		if svc, ok := strings.CutPrefix(s.NetworkMode, "service:"); ok {
			if _, exists := c.Services[svc]; !exists {
				t.Errorf("service %s: network_mode names no service %q", name, svc)
			}
			if len(s.Ports) > 0 {
				t.Errorf("service %s shares another's network and cannot publish ports", name)
			}
		} else if s.NetworkMode != "" {
			t.Errorf("service %s: network_mode %q (host networking would publish every listener)", name, s.NetworkMode)
		}
		for _, d := range s.DependsOn {
			if _, ok := c.Services[d]; !ok {
				t.Errorf("service %s depends on no service %q", name, d)
			}
		}
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
				if _, err := os.Stat(filepath.Join(dir, src)); err != nil {
					t.Errorf("service %s: volume source: %v", name, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("service %s: named volume %q is not declared", name, src)
			}
		}
		for _, sec := range s.Secrets {
			if _, ok := c.Secrets[sec]; !ok {
				t.Errorf("service %s: secret %q is not declared", name, sec)
			}
		}
	}
	for name, s := range c.Secrets {
		if _, err := os.Stat(filepath.Join(dir, s.File)); err != nil {
			t.Errorf("secret %s: %v", name, err)
		}
	}

	// Postern's config in the compose setup is valid and its sockets are where main.cf and
	// main-milter.cf look for them.
	pb, err := os.ReadFile(filepath.Join(dir, "postern.compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(pb)
	if err != nil {
		t.Fatalf("postern.compose.yaml: %v", err)
	}
	for _, e := range cfg.Validate() {
		t.Errorf("postern.compose.yaml: %v", e)
	}
	for _, s := range []string{cfg.Listen.LMTP, cfg.Listen.Socketmap, cfg.Listen.Milter} {
		if filepath.Dir(s) != "/run/postern" {
			t.Errorf("postern.compose.yaml: socket %q is not in /run/postern (postern_run_dir)", s)
		}
	}
	if filepath.Base(cfg.Listen.Milter) != "milter.sock" {
		t.Errorf("postern.compose.yaml: listen.milter %q, want /run/postern/milter.sock (main-milter.cf)", cfg.Listen.Milter)
	}
}

func TestContribSystemdUnit(t *testing.T) {
	t.Parallel()
	_, dir := contribDir(t)
	b, err := os.ReadFile(filepath.Join(dir, "postern.service"))
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]map[string][]string{}
	var cur string
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			cur = strings.Trim(line, "[]")
			sections[cur] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || cur == "" {
				t.Errorf("postern.service line %d: %q is not key=value in a section", i+1, line)
				continue
			}
			sections[cur][strings.TrimSpace(k)] = append(sections[cur][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	want := map[string]map[string]string{
		"Unit": {"Description": "", "Before": "postfix.service"},
		"Service": {
			"User": "postern", "Group": "postfix",
			"RuntimeDirectory": "postern", "StateDirectory": "postern", "ConfigurationDirectory": "postern",
			"ExecStart":       "/usr/bin/postern serve --config /etc/postern/postern.yaml",
			"Restart":         "always",
			"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
			"PrivateDevices": "yes", "CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
			"MemoryDenyWriteExecute": "yes", "SystemCallFilter": "@system-service",
		},
		"Install": {"WantedBy": "multi-user.target"},
	}
	for sec, keys := range want {
		got, ok := sections[sec]
		if !ok {
			t.Errorf("postern.service has no [%s] section", sec)
			continue
		}
		for k, v := range keys {
			vals, ok := got[k]
			switch {
			case !ok:
				t.Errorf("postern.service [%s] lacks %s", sec, k)
			case v != "" && !slices.Contains(vals, v):
				t.Errorf("postern.service [%s] %s=%q, want %q", sec, k, vals, v)
			}
		}
	}
	if r := sections["Service"]["ReadWritePaths"]; len(r) > 0 {
		t.Errorf("postern.service: ReadWritePaths %v; Postern writes only its Runtime- and StateDirectory", r)
	}
}
