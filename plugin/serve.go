package plugin

import (
	"os"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
)

// Serve runs p as a provider process and returns only when Postern ends the process. Call it from
// a provider binary's main, after anything that may fail, and write nothing to standard output
// before or after: go-plugin's handshake line travels there. go-plugin's own messages go as hclog
// JSON to standard error, which Postern logs; use NewLogger for the provider's. Run by hand (not by
// Postern) the binary prints a note to standard error and exits with status 1.
func Serve(p Provider) {
	goplugin.Serve(&goplugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         pluginSet(p),
		GRPCServer:      goplugin.DefaultGRPCServer,
		Logger: hclog.New(&hclog.LoggerOptions{
			Name:       "provider",
			Output:     os.NewFile(2, "/dev/stderr"),
			JSONFormat: true,
			Level:      hclog.Info,
		}),
	})
}
