"""An OTLP/HTTP sink for the load scripts: answers 200 to every export.

    python3 tests/load/otlp_sink.py PORT BYTES_FILE

Reads each POST body and answers with an empty protobuf (a valid
ExportTraceServiceResponse), writing the running total of bytes received to
BYTES_FILE. It stands in for a collector so that what a load script measures
is the replica's cost of building, batching and exporting spans, not a
collector's.
"""

import http.server
import socketserver
import sys

port, counter = int(sys.argv[1]), sys.argv[2]
received = 0


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        global received
        received += len(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with open(counter, "w") as out:
            out.write(str(received))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


Server(("127.0.0.1", port), Sink).serve_forever()
