import 'dart:async';
import 'dart:convert';
import 'dart:io';

import 'package:cellbus_cell/cellbus_cell.dart';
import 'package:test/test.dart';

/// Runs [handlers] on [requests] and returns the replies by id.
Future<Map<String, Map<String, Object?>>> run(
  Map<String, Handler> handlers,
  List<Map<String, Object?>> requests, {
  StringBuffer? log,
}) async {
  final input = Stream.value(
      utf8.encode(requests.map((r) => '${jsonEncode(r)}\n').join()));
  final dir = await Directory.systemTemp.createTemp('cellbus_cell_test');
  final outFile = File('${dir.path}/out');
  final errFile = File('${dir.path}/err');
  final out = outFile.openWrite();
  final err = errFile.openWrite();
  await serve(handlers, input: input, output: out, log: err);
  await out.close();
  await err.close();
  log?.write(await errFile.readAsString());
  final replies = <String, Map<String, Object?>>{};
  for (final line in await outFile.readAsLines()) {
    final reply = (jsonDecode(line) as Map).cast<String, Object?>();
    replies[reply['id'] as String] = reply;
  }
  await dir.delete(recursive: true);
  return replies;
}

Map<String, Object?> request(String id, String verb, [Object? payload]) => {
      'id': id,
      'service': 's',
      'verb': verb,
      'sentAt': '2026-12-01T00:00:00Z',
      'payload': payload,
      'timeoutMs': 5000,
    };

void main() {
  test('each request is answered under its id, slow ones after fast ones', () async {
    final replies = await run({
      'double': (payload, _) async {
        await Future<void>.delayed(Duration(milliseconds: 100 - (payload as int)));
        return payload * 2;
      },
    }, [request('a', 'double', 2), request('b', 'double', 50)]);
    expect(replies['a'], {'id': 'a', 'ok': true, 'payload': 4});
    expect(replies['b'], {'id': 'b', 'ok': true, 'payload': 100});
  });

  test('errors keep their code and details', () async {
    final replies = await run({
      'go': (payload, _) => throw CellError('forbidden', 'not you',
          details: {'who': payload}, retryable: false),
    }, [request('a', 'go', 'eve')]);
    expect(replies['a'], {
      'id': 'a',
      'ok': false,
      'error': {
        'code': 'forbidden',
        'message': 'not you',
        'details': {'who': 'eve'},
        'retryable': false,
      },
    });
  });

  test('unknown verbs, bugs and unencodable results are answered', () async {
    final log = StringBuffer();
    final replies = await run({
      'boom': (_, __) => throw StateError('broken'),
      'odd': (_, __) => Object(),
    }, [request('a', 'nope'), request('b', 'boom'), request('c', 'odd')], log: log);
    expect((replies['a']!['error'] as Map)['code'], 'unknown_verb');
    expect((replies['b']!['error'] as Map)['code'], 'cell_failed');
    expect((replies['c']!['error'] as Map)['code'], 'cell_failed');
    expect(log.toString(), contains('broken'));
  });

  test('the request carries its verb and time left', () async {
    Request? seen;
    await run({
      'look': (_, request) {
        seen = request;
        return null;
      },
    }, [request('a', 'look')]);
    expect(seen!.verb, 'look');
    expect(seen!.timeLeft!.inMilliseconds, inInclusiveRange(1, 5000));
  });

  test('only the protocol\'s codes are accepted', () {
    expect(() => CellError('oops', 'x'), throwsArgumentError);
  });
}
