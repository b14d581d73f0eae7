/// Write a Cellbus process cell in Dart, with the Dart SDK's libraries only.
///
/// A process cell reads one request envelope per line on stdin and writes one reply per
/// line on stdout, matched by the request's `id`, several requests in flight at once (see
/// the README, "Process cells"). This library does the protocol; you write handlers:
///
/// ```dart
/// import 'package:cellbus_cell/cellbus_cell.dart';
///
/// Future<void> main() => serve({
///       'hello': (payload, request) {
///         final name = (payload as Map)['name'];
///         if (name == null) throw CellError('bad_request', 'name is required');
///         return {'greeting': 'Hello, $name!'};
///       },
///     });
/// ```
///
/// A handler gets the request's payload (decoded JSON) and the [Request], and returns a
/// JSON-encodable value or a Future of one. Throw [CellError] for an error reply with a
/// code; anything else thrown is answered `cell_failed` and printed to stderr, which the
/// runtime logs. Requests run concurrently on the event loop; print diagnostics to
/// stderr, never to stdout.
library;

import 'dart:async';
import 'dart:convert';
import 'dart:io';

/// The closed set of error codes of the wire protocol.
const Set<String> errorCodes = {
  'bad_request',
  'schema_violation',
  'unknown_verb',
  'unavailable',
  'timeout',
  'resource_exhausted',
  'cell_failed',
  'forbidden',
  'internal',
};

/// An error reply: [code] is one of [errorCodes]; [details] any JSON value.
class CellError implements Exception {
  CellError(this.code, this.message, {this.details, this.retryable}) {
    if (!errorCodes.contains(code)) {
      throw ArgumentError.value(code, 'code', 'not one of $errorCodes');
    }
  }

  final String code;
  final String message;
  final Object? details;
  final bool? retryable;

  Map<String, Object?> toJson() => {
        'code': code,
        'message': message,
        if (details != null) 'details': details,
        if (retryable != null) 'retryable': retryable,
      };

  @override
  String toString() => 'CellError($code): $message';
}

/// One request: its verb, payload, ids and deadline.
class Request {
  Request.fromJson(Map<String, Object?> envelope)
      : id = envelope['id'] as String,
        correlationId =
            (envelope['correlationId'] ?? envelope['id']) as String,
        service = envelope['service'] as String?,
        verb = envelope['verb'] as String,
        payload = envelope['payload'],
        meta = (envelope['meta'] as Map?)?.cast<String, String>() ?? const {},
        deadline = envelope['timeoutMs'] == null
            ? null
            : DateTime.now()
                .add(Duration(milliseconds: (envelope['timeoutMs'] as num).toInt()));

  final String id;
  final String correlationId;
  final String? service;
  final String verb;
  final Object? payload;
  final Map<String, String> meta;

  /// When the runtime gives up on this request; null when it set no deadline.
  final DateTime? deadline;

  /// Time until [deadline], never negative; null without one.
  Duration? get timeLeft {
    final left = deadline?.difference(DateTime.now());
    if (left == null) return null;
    return left.isNegative ? Duration.zero : left;
  }
}

/// Handles one verb.
typedef Handler = FutureOr<Object?> Function(Object? payload, Request request);

/// Answers requests from [input] (stdin by default) on [output] (stdout) until the input
/// ends, then waits for the requests still running.
Future<void> serve(
  Map<String, Handler> handlers, {
  Stream<List<int>>? input,
  IOSink? output,
  IOSink? log,
}) async {
  final out = output ?? stdout;
  final err = log ?? stderr;
  final running = <Future<void>>[];

  Future<void> run(Map<String, Object?> envelope) async {
    final request = Request.fromJson(envelope);
    Map<String, Object?> line;
    try {
      final handler = handlers[request.verb];
      if (handler == null) {
        throw CellError('unknown_verb', 'no handler for verb ${request.verb}');
      }
      final payload = await handler(request.payload, request);
      line = {'id': request.id, 'ok': true, 'payload': payload};
      // Fail here, in the handler's name, rather than with half a line written.
      jsonEncode(line);
    } on CellError catch (error) {
      line = {'id': request.id, 'ok': false, 'error': error.toJson()};
    } catch (error, stack) {
      err.writeln('$error\n$stack');
      line = {
        'id': request.id,
        'ok': false,
        'error': {'code': 'cell_failed', 'message': '$error'},
      };
    }
    out.writeln(jsonEncode(line));
    await out.flush();
  }

  final lines = (input ?? stdin)
      .transform(utf8.decoder)
      .transform(const LineSplitter());
  await for (final raw in lines) {
    Object? envelope;
    try {
      envelope = jsonDecode(raw);
    } on FormatException catch (error) {
      // Only the runtime writes here, so this is a bug somewhere: say so, go on.
      err.writeln('cellbus_cell: a line that is not a request: $error');
      continue;
    }
    running.add(run((envelope as Map).cast<String, Object?>()));
  }
  await Future.wait(running);
}
