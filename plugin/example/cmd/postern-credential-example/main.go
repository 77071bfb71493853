// Command postern-credential-example is a Postern credential provider that reads each project's
// credential from the JSON file named by the "file" key of the project's plugin configuration.
// See package github.com/postern/postern/plugin/example for the file's layout.
//
// Postern starts it; run by hand it prints a note and exits. Declare it in Postern's
// configuration under a name and point a project at that name:
//
//	auth:
//	  type: plugin
//	  username: noreply@acme.example
//	  plugin:
//	    provider: file-example
//	    config:
//	      file: /etc/postern/credentials.json
package main

import (
	"log/slog"

	"github.com/postern/postern/plugin"
	"github.com/postern/postern/plugin/example"
)

func main() {
	// Nothing may be written to standard output: go-plugin's handshake travels there.
	plugin.Serve(&example.FileProvider{Log: plugin.NewLogger(slog.LevelInfo)})
}
